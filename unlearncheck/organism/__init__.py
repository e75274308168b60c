"""The embedded model organism: a tiny GPT-2 with known knowledge, and its zoo of variants."""

from unlearncheck.organism.zoo import VARIANTS, checkpoint_path, write_zoo, zoo_dir

__all__ = ["VARIANTS", "checkpoint_path", "write_zoo", "zoo_dir"]
