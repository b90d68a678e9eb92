"""The data: rendered scenes and their task labels, the object world, splits, Taskonomy folders, CIFAR-100."""
