"""Taskonomy (Zamir et al., CVPR 2018): Steps I-IV, Gain and Quality, novel tasks, the task tree, Sec. 5's stability
checks.
"""
