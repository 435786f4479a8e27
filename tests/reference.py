"""A float64 NumPy port of the vector ReduNet formulas, written for clarity.

Loops and explicit inverses on purpose: this is the slow, obvious reference the
compiled JAX paths are compared against.
"""

import numpy as np


def logdet(A):
    sign, value = np.linalg.slogdet(A)
    assert sign > 0
    return value


def rates(Z, Pi, eps_sq):
    Z = np.asarray(Z, np.float64)
    Pi = np.asarray(Pi, np.float64)
    m, d = Z.shape
    r = 0.5 * logdet(np.eye(d) + d / (m * eps_sq) * Z.T @ Z)
    rc = 0.0
    for j in range(Pi.shape[1]):
        m_j = Pi[:, j].sum()
        if m_j == 0:
            continue
        cov = Z.T @ np.diag(Pi[:, j]) @ Z
        rc += m_j / (2 * m) * logdet(np.eye(d) + d / (m_j * eps_sq) * cov)
    return r - rc, r, rc


def build_layer(Z, Pi, eps_sq):
    m, d = Z.shape
    alpha = d / (m * eps_sq)
    E = alpha * np.linalg.inv(np.eye(d) + alpha * Z.T @ Z)
    C, gamma = [], []
    for j in range(Pi.shape[1]):
        m_j = Pi[:, j].sum()
        gamma.append(m_j / m)
        if m_j == 0:
            C.append(np.zeros((d, d)))
            continue
        alpha_j = d / (m_j * eps_sq)
        C.append(
            alpha_j * np.linalg.inv(np.eye(d) + alpha_j * Z.T @ np.diag(Pi[:, j]) @ Z)
        )
    return E, np.array(C), np.array(gamma)


def apply_layer(E, C, gamma, Z, eta, lam):
    out, pis = [], []
    for z in Z:
        norms = np.array([max(np.linalg.norm(Cj @ z), 1e-8) for Cj in C])
        logits = np.where(gamma > 0, -lam * norms, -np.inf)
        pihat = np.exp(logits - logits.max())
        pihat /= pihat.sum()
        step = E @ z - sum(
            g * p * (Cj @ z) for g, p, Cj in zip(gamma, pihat, C, strict=True)
        )
        z_new = z + eta * step
        out.append(z_new / max(np.linalg.norm(z_new), 1e-8))
        pis.append(pihat)
    return np.array(out), np.array(pis)


def construct(X, labels, num_classes, num_layers, eta, eps_sq, lam):
    Z = np.asarray(X, np.float64)
    Z = Z / np.maximum(np.linalg.norm(Z, axis=1, keepdims=True), 1e-8)
    Pi = np.eye(num_classes)[labels]
    layers = []
    for _ in range(num_layers):
        E, C, gamma = build_layer(Z, Pi, eps_sq)
        Z, _ = apply_layer(E, C, gamma, Z, eta, lam)
        layers.append((E, C, gamma))
    return layers, Z


def blobs(m_per_class, d, k, seed=0, spread=0.3):
    """Small labelled data: k noisy clusters in d dimensions."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d))
    y = np.repeat(np.arange(k), m_per_class)
    X = centres[y] + spread * rng.standard_normal((len(y), d))
    return X, y
