"""``python -m clipforge.embed``: ``clipforge embed`` as a module, the entry point for
torchrun (see :mod:`clipforge.embed.__main__`). The library is :mod:`clipforge.index`."""
