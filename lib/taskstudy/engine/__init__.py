"""The machinery every unit of work goes through: parameters, the results store, the unit runner and its cluster, cache
keys, paths, errors, fault points.
"""
