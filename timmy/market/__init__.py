"""The market's pure rules: personas, bids, auctions and the task lifecycle (no I/O, no clock)."""
