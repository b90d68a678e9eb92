"""Which tasks should be learned together (Standley et al., ICML 2020): multi-task networks, lookahead affinities, the
best grouping.
"""
