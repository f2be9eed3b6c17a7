"""Dense CRF post-processing: a permutohedral lattice and mean-field inference in pure PyTorch."""
from .lattice import NORMALIZATIONS, LatticeFilter, PermutohedralLattice
from .layer import DenseCRF
from .meanfield import PRESETS, dense_crf, mean_field, unary_from_probs

__all__ = ["dense_crf", "DenseCRF", "mean_field", "unary_from_probs", "PRESETS", "NORMALIZATIONS",
           "PermutohedralLattice", "LatticeFilter"]
