"""Framework integrations, all built on :class:`pipeline.record.Recorder`: PyTorch Lightning
(:mod:`.lightning`), the Hugging Face Trainer (:mod:`.hf`). Each module imports its
framework when it is imported itself; ``import pipeline`` imports none of them."""
