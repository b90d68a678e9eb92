"""taskstudy: a reproducible study of knowledge transfer between visual tasks.

Taskonomy (Zamir et al. 2018), task grouping (Standley et al. 2020), Task2Vec (Achille et al. 2019) and
layer-wise transferability (Yosinski et al. 2014), redone on procedurally rendered indoor scenes.
"""

__version__ = "0.1.0"
