"""Data: from the configured files to the checked, split records that training reads.

    tuneline validate configs/default.yaml          # the whole of it; `--source FILE` reads one source

sources.py   the hub-id rule (is_hub_id), Source (configured name + path read), read_source: one source -> records
readers.py   file formats (.jsonl/.json/.csv/.parquet, .gz, hub datasets) -> raw rows; DataError; reject rows
shapes.py    shape detection, data.columns renames, rows -> canonical records, the {text} prompt-template check
checks.py    hygiene, exact/near duplicates, leakage, contamination, lengths, the Great Expectations glue; Ledger
splits.py    stratified splits, the training sample (rows_per_label / train_rows), label balance, the general mix,
             the preference pairs (data.preference) and their length bias
validate.py  validate() (the orchestration, Validated) and gate()
records.py   the task / preference / rejected tables' columns, messages() (the chat of a task row)
snapshot.py  the raw_data artifact: copies of the configured files, read back under their configured names
dedup.py, contamination.py, expectations.py: the algorithms behind checks.py
"""
