"""Unlearning methods, one file each; ``conf/unlearn_method/<name>.yaml`` names the class in ``_target_``."""
