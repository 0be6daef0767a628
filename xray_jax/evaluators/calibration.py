"""Temperature scaling: one scalar T, fitted on validation, that softens (T > 1) or sharpens
(T < 1) every prediction without changing its ranking or its argmax."""

import numpy as np

# log T is searched on this grid: T from about 0.05 to 20, in steps of 0.5% in T.
LOG_TEMPERATURES = np.linspace(np.log(0.05), np.log(20.0), 1201)
_TINY = 1e-12  # Keeps log() finite at probabilities of exactly 0.


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
  """Class probabilities [N, C] with their logits divided by `temperature`."""
  if temperature == 1.0:
    return probs
  logits = np.log(np.clip(probs, _TINY, 1.0)) / temperature
  logits -= logits.max(axis=1, keepdims=True)
  scaled = np.exp(logits)
  return scaled / scaled.sum(axis=1, keepdims=True)


def negative_log_likelihood(probs: np.ndarray, labels: np.ndarray) -> float:
  """Mean -log P(true class)."""
  return float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], _TINY, 1.0))))


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> float:
  """The temperature that minimizes the negative log-likelihood of `labels`."""
  losses = [negative_log_likelihood(apply_temperature(probs, np.exp(t)), labels)
            for t in LOG_TEMPERATURES]
  return float(np.exp(LOG_TEMPERATURES[int(np.argmin(losses))]))
