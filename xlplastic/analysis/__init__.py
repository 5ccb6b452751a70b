"""Cross-lingual structure analysis (Conneau, Wu et al., 2020): CKA, Procrustes/CSLS alignment, retrieval."""
