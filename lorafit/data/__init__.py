"""Examples -> token ids + loss masks -> batches (pad, bucket, pack)."""
