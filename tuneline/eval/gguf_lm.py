"""An lm-eval model over a GGUF file with llama.cpp (llama-cpp-python), in process: MMLU and GSM8K on exports.

    lm = GGUFLM("model-Q4_K_M.gguf")   # harness.run_gguf_benchmarks(path, cfg.evaluate) runs the configured tasks

`tuneline export configs/default.yaml` reaches it through the export gate. The same custom tasks as the
HF candidates (`tuneline.eval.mmlu`, `tuneline.eval.gsm8k`), so an export's per-item scores pair with the
base model's. Prompts are raw text (no chat template, no BOS), as HFLM scores them.
loglikelihood evaluates each context once and every continuation on top of it, reusing llama.cpp's
KV cache (a cloze MMLU item: one context, four answers); generate_until decodes greedily. Vocabulary logits
are computed only where a token is scored (`_logits`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from lm_eval.api.model import LM

from tuneline.progress import progress


def picked_logprobs(rows: np.ndarray, ids: list[int]) -> np.ndarray:
    """log softmax(rows[i])[ids[i]] for llama.cpp's float32 logit rows, in float64.

    The normalizer is torch's logsumexp in float32 (vectorized, both cores): numpy's logaddexp.reduce over a
    49k vocabulary took 0.37 s for 250 rows, this 0.03 s (a GGUF file's perplexity 1.5x faster overall,
    `bench/eval_throughput.py --parts gguf`); it differs by < 1e-6 per row."""
    import torch

    lse = torch.logsumexp(torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32)), dim=1).double().numpy()
    return rows[np.arange(len(ids)), ids].astype(np.float64) - lse


class GGUFLM(LM):
    def __init__(self, path: str | Path, n_ctx: int = 2048) -> None:
        super().__init__()
        import llama_cpp

        self.path = str(path)
        self.llm = llama_cpp.Llama(model_path=self.path, n_ctx=n_ctx, logits_all=True, verbose=False,
                                   n_threads=os.cpu_count())

    def close(self) -> None:
        self.llm.close()

    def tokens(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode(), add_bos=False, special=True) if text else []

    def _split(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        # As HFLM: trailing spaces of the context belong to the continuation, and the continuation's
        # tokens are those of context + continuation after the context's (tokenizers merge across).
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
        whole, ctx = self.tokens(context + continuation), self.tokens(context)
        return whole[: len(ctx)], whole[len(ctx):]

    @contextlib.contextmanager
    def _logits(self, on: bool) -> Iterator[None]:
        """Whether eval() has llama.cpp compute and copy out the vocabulary logits of every token. They cost ~25 % of
        a prompt's time (Q6_K: 438 against 581 tokens/s), and only the scored tokens need them: a context's
        all but last, and a generation's prompt, run without. llama-cpp-python reads the flag at each eval()."""
        was, self.llm._logits_all = self.llm._logits_all, on
        try:
            yield
        finally:
            self.llm._logits_all = was

    def _score(self, ctx: list[int], cont: list[int]) -> tuple[float, bool]:
        """Log-probability of `cont` after `ctx`, with the KV cache holding all of `ctx` but its last token,
        which runs again here: its logits score the continuation's first token."""
        self.llm.n_tokens = len(ctx) - 1  # eval() drops the cache past this point
        self.llm.eval(ctx[-1:] + cont)
        rows = self.llm.scores[len(ctx) - 1: len(ctx) + len(cont) - 1]
        return float(picked_logprobs(rows, cont).sum()), bool((rows.argmax(axis=1) == np.array(cont)).all())

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        out: list[tuple[float, bool] | None] = [None] * len(requests)
        by_context: dict[tuple[int, ...], list[tuple[int, list[int]]]] = {}
        for i, req in enumerate(requests):
            ctx, cont = self._split(*req.args)
            if not ctx:  # nothing to condition on: the first continuation token becomes the context
                ctx, cont = cont[:1], cont[1:]
            by_context.setdefault(tuple(ctx), []).append((i, cont))
        with progress(desc=f"loglikelihood {Path(self.path).name}", unit="req", total=len(requests),
                      disable=disable_tqdm) as bar:
            for ctx, items in by_context.items():
                self.llm.reset()
                with self._logits(False):
                    self.llm.eval(list(ctx[:-1]))
                for i, cont in items:
                    out[i] = self._score(list(ctx), cont) if cont else (0.0, True)
                bar.update(len(items))
        return out  # type: ignore[return-value]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError("GGUFLM scores loglikelihood and generate_until tasks only (MMLU, GSM8K); "
                                  "export perplexity goes through tuneline.eval.perplexity.gguf_perplexity, "
                                  "on the HF tokenizer's ids")

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        outs = []
        for req in progress(requests, f"generate_until {Path(self.path).name}", "req", disable=disable_tqdm):
            context, kwargs = req.args
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            self.llm.reset()
            with self._logits(False):
                res = self.llm.create_completion(prompt=self.tokens(context), temperature=0.0, stop=until or None,
                                                 max_tokens=kwargs.get("max_gen_toks", 256))
            outs.append(res["choices"][0]["text"])
        return outs
