"""Signed calls between every role (btauth/1): the client that signs a request (``signed.client``) and the receiver's
check of signature, address, freshness and nonce (``signed.server``). Streams are read with ``protocol.streams``."""

# What a caller without a validator permit must hold for a miner to answer it (the miner's
# default --min-stake; `slmnet doctor` warns a validator below it).
CALLER_MIN_STAKE_TAO = 1000.0
