"""Training the editor: its objective (``objective``), the pairs it learns from (``data``), the
resumable loop (``loop``), ``editsynth train`` (``cli``)."""
