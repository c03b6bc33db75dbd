"""Many adapters on one base: the host API (host.py) and its decode loop (decode.py)."""
