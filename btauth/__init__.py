"""Signed traffic between neurons (btauth/1): the client that signs and reads a miner's stream, and the server-side check."""
