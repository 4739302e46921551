"""tuneline: declarative LLM fine-tuning, from raw data to an evaluated, merged, exported model.

The logic lives here and never imports ZenML; steps/ and pipelines/ wrap it.
"""

__version__ = "0.1.0"
