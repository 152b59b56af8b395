"""After training: embed a collection, index it, search it.

* :mod:`.folder` -- exact search over a small image folder, its embeddings cached between calls;
* :mod:`.layout` -- the part files ``embed`` writes (clip-retrieval's layout);
* :mod:`.writer` -- the Lightning prediction writer that writes them, one rank at a time;
* :mod:`.sources` -- what ``embed`` reads, cut into parts that ranks and workers share;
* :mod:`.vectors` -- faiss indexes built from those parts, and their recall against exact search.
"""
