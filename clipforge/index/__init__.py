"""Collections of embeddings put to work: embed a folder or manifest once, index it with
faiss, search it by text, by image or over its captions.

Modules, one concept each: :mod:`.items` (what a collection holds, read from disk),
:mod:`.store` (the embedding folder: shards, rows, ``model.json``, progress),
:mod:`.embedding` (the resumable embedding run), :mod:`.planner` (which faiss index, and
how well it does), :mod:`.search` (an index folder and queries against it).
"""
