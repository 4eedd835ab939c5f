"""The iMAML paper's reported numbers (Rajeswaran et al., NeurIPS 2019, Table 2; docs/reproduction.md, "The paper's numbers").

Omniglot test accuracy (%) and 95% interval. MAML and first-order MAML are Finn et al.'s
numbers, Reptile Nichol et al.'s (transductive), as the paper copied them.
"""

from __future__ import annotations

__all__ = ["TABLE2", "SETTINGS"]

SETTINGS = {"5w1s": (5, 1), "5w5s": (5, 5), "20w1s": (20, 1), "20w5s": (20, 5)}

TABLE2 = {
    "maml": {"5w1s": (98.7, 0.4), "5w5s": (99.9, 0.1), "20w1s": (95.8, 0.3), "20w5s": (98.9, 0.2)},
    "fomaml": {"5w1s": (98.3, 0.5), "5w5s": (99.2, 0.2), "20w1s": (89.4, 0.5), "20w5s": (97.9, 0.1)},
    "reptile": {"5w1s": (97.68, 0.04), "5w5s": (99.48, 0.06), "20w1s": (89.43, 0.14), "20w5s": (97.12, 0.32)},
    "imaml-gd": {"5w1s": (99.16, 0.35), "5w5s": (99.67, 0.12), "20w1s": (94.46, 0.42), "20w5s": (98.69, 0.1)},
    "imaml-hf": {"5w1s": (99.50, 0.26), "5w5s": (99.74, 0.11), "20w1s": (96.18, 0.36), "20w5s": (99.14, 0.1)},
}
