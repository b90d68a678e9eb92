"""How transferable are features (Yosinski et al., 2014): AnB, BnB, AnB+, BnB+ per layer."""
