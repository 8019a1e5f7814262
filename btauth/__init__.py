"""Signed traffic between neurons (btauth/1): the client that signs and reads a miner's stream, and the server-side check."""

# What a caller without a validator permit must hold for a miner to answer it (the miner's
# default --min-stake; `slmnet doctor` warns a validator below it).
CALLER_MIN_STAKE_TAO = 1000.0
