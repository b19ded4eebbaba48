"""In-memory merges (pygit2): analysis of a pair, detection, resolution, the merge queue."""
