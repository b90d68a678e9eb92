"""Beyond the papers: whether the four methods agree; cheap transferability estimators against Step II."""
