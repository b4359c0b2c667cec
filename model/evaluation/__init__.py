"""Measuring editors: the paper's CLIP sweep (``clip_sweep``) against SDEdit (``sdedit``), the exact
shapes-world oracle (``oracle``), and its results compared and used to choose guidance (``results``)."""
