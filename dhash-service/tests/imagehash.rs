//! dHash agreement with Python's `imagehash.dhash` (filled in by the dHash work).
