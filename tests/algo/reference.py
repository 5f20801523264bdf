"""Float64 NumPy references for the SRPO losses, written from SPEC 4-7 (not from the code).

Loops over tokens and plain numpy math, with analytic gradients derived by hand:

  D as a function of the student bucket log-probs l (teacher t fixed, P = e^l, T = e^t):
    alpha = 0:  dD/dl_j = -T_j
    alpha = 1:  dD/dl_j = P_j (l_j - t_j + 1)
    otherwise:  dD/dl_j = (1 - alpha) P_j (l_j - log M_j)
  tail l_k = log(1 - S), S = sum_{j<k} P_j: dl_k/dl_j = -P_j / (1 - S) (0 when clamped);
  l_j = z[K_j] - logsumexp(z): dl_j/dz_v = [v = K_j] - softmax(z)_v.
"""

import numpy as np

LOG_S_MAX = -1e-7


def log_softmax(z):
    m = np.max(z, axis=-1, keepdims=True)
    return z - m - np.log(np.sum(np.exp(z - m), axis=-1, keepdims=True))


def logsumexp(x):
    m = np.max(x)
    return m + np.log(np.sum(np.exp(x - m)))


def topk_ids(z, k):
    return np.argsort(-z, kind="stable")[:k]


def buckets(zs, zt, k, add_tail):
    """One position: (student bucket log-probs, teacher bucket log-probs, clamped?)."""
    idx = topk_ids(zs, k)
    out, clamped = [], False
    for z in (zs, zt):
        lp = log_softmax(z)[idx]
        if add_tail:
            log_s = logsumexp(lp)
            if z is zs:
                clamped = log_s > LOG_S_MAX
            lp = np.append(lp, np.log(-np.expm1(min(log_s, LOG_S_MAX))))
        else:
            lp = lp - logsumexp(lp)
        out.append(lp)
    return out[0], out[1], clamped


def jsd(ls, lt, alpha):
    p, t = np.exp(ls), np.exp(lt)
    if alpha == 0.0:
        return float(np.sum(t * (lt - ls)))
    if alpha == 1.0:
        return float(np.sum(p * (ls - lt)))
    m = (1 - alpha) * p + alpha * t
    return float((1 - alpha) * np.sum(p * (ls - np.log(m))) + alpha * np.sum(t * (lt - np.log(m))))


def jsd_grad_l(ls, lt, alpha):
    p, t = np.exp(ls), np.exp(lt)
    if alpha == 0.0:
        return -t
    if alpha == 1.0:
        return p * (ls - lt + 1.0)
    log_m = np.log((1 - alpha) * p + alpha * t)
    return (1 - alpha) * p * (ls - log_m)


def divergence_and_grad(zs_TV, zt_TV, k, alpha, add_tail, temperature):
    """Per-token D [N] and dD_n/dlogits_n [N, V] for flat [N, V] raw logits."""
    n_tok, vocab = zs_TV.shape
    d = np.zeros(n_tok)
    g = np.zeros((n_tok, vocab))
    for n in range(n_tok):
        zs, zt = zs_TV[n] / temperature, zt_TV[n] / temperature
        ls, lt, clamped = buckets(zs, zt, k, add_tail)
        d[n] = jsd(ls, lt, alpha)
        gl = jsd_grad_l(ls, lt, alpha)
        idx = topk_ids(zs, k)
        if add_tail:
            gj = gl[:k].copy()
            if not clamped:
                gj += gl[k] * (-np.exp(ls[:k]) / np.exp(ls[k]))
            p = np.exp(log_softmax(zs))
            gz = -p * np.sum(gj)
            gz[idx] += gj
        else:
            q = np.exp(ls)
            gz = np.zeros(vocab)
            gz[idx] = gl - q * np.sum(gl)
        g[n] = gz / temperature
    return d, g


def entropy(z_TV):
    lp = log_softmax(z_TV)
    return -np.sum(np.exp(lp) * lp, axis=-1)


def grpo_token(logp, old, roll, adv, cl=0.2, ch=0.28, c=3.0, cap=2.0):
    """(loss, dloss/dlogp) of one token, SPEC 4."""
    x = logp - old
    inside = -20.0 <= x <= 20.0
    r = np.exp(np.clip(x, -20.0, 20.0))
    dr = r if inside else 0.0
    pg1, pg2 = -adv * r, -adv * np.clip(r, 1 - cl, 1 + ch)
    if pg1 > pg2:
        loss, grad = pg1, -adv * dr
    elif pg2 > pg1:
        loss, grad = pg2, 0.0
    else:  # tie: both branches coincide; the clip is inactive unless r sits on its edge
        loss, grad = pg1, (-adv * dr if 1 - cl < r < 1 + ch else 0.0)
    if adv < 0 and loss > -c * adv:
        loss, grad = -c * adv, 0.0
    w = min(np.exp(np.clip(old - roll, -20.0, 20.0)), cap)
    return loss * w, grad * w
