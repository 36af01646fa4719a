"""One video in, results out: decode, sample, batch, detect, align, embed, track, write.

Independent of Ray and of the SQL index: `jobs` drives it, one video or many at a time.
"""
