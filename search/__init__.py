"""The query side: find a person, the vector index, named people and clusters, timelines, reports."""
