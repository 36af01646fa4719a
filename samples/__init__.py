"""The sample archive: real photos made into test and demo videos (outside the runtime path)."""
