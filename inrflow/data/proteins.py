"""Protein structures as coordinate-value pairs: one pair per heavy atom (paper App. A.3).

The *coordinate* of an atom is a feature vector (``FEATURE_NAMES``):

- its residue's position, channel 0: the centre of cell ``i`` of a 1-D grid of ``K`` cells on
  [-1, 1] (``residue_position``), which is what the model's ``residue`` grouping reads to put all
  atoms of residue ``i`` into latent ``i``;
- the atom features of the paper's Table 8: element (one-hot C, N, O, S, other), degree (heavy
  neighbours), formal charge, implicit valence (hydrogens), hybridisation (one-hot sp, sp2, sp3,
  sp3d, sp3d2, other), aromaticity, number of rings;
- ``NUM_EIGVECS`` eigenvectors of the graph Laplacian of the residue's heavy-atom graph (the
  non-trivial ones of smallest eigenvalue, zero-padded; sign fixed so the largest entry is
  positive), which tell apart atoms of one residue;
- the residue type: one channel holding an index into a learned table of the model
  (``INRFlowConfig.residue_vocab``), or, when precomputed per-residue embeddings (e.g. from a
  protein language model) are given, those ``E`` channels instead.

The *value* is the atom's position: centred on the sample's atoms, in the canonical frame of its
Cα atoms (principal axes, deterministic signs; ``frame``), optionally randomly rotated in
training (``rotate``), divided by ``position_scale`` (10 Å).

Atom features come from residue templates, not from a chemistry toolkit: each of the 20 amino
acids is written down once as its heavy atoms and bonds (with bond orders, in the protonation
state at pH 7: Lys and Arg +1, Asp and Glu -1, His neutral with H on NE2), and every residue is
treated as in-chain (peptide bonds on both sides; termini and disulfides are not special-cased).
Degree, hydrogens and ring counts follow from the graph; an atom is sp2 when it is aromatic, in
a double bond, or an N/O bonded to a double-bonded atom (amide N, carboxylate O, guanidinium N,
phenol O: RDKit's conjugation rule), else sp3. This is deterministic, needs no RDKit, and gives
every atom of a residue type the same features whatever file it came from.

Files are read with Biopython's PDB / mmCIF parsers (``pip install 'inrflow[protein]'``): the
first model, one chain, standard amino acids (MSE read as MET), heavy atoms named in the
template (OXT and hydrogens are dropped). The bundled demo set is the 50 single-chain
structures (79-173 residues) that the PyPI package ``MDAnalysisTests`` ships for its DSSP tests.

Batches need a fixed size, so every item has ``num_atoms`` atoms (the most any sample of the set
has) and chains longer than ``max_residues`` are cropped to a window of that many residues. A
sample with fewer atoms is padded with *repeated* atoms (the same features and position, drawn
with the item's seed), as point clouds are; the first ``num_real`` atoms of an item are the real
ones, and ``atom_index`` maps them back to the chain.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .base import CoordinateDataset

__all__ = [
    "AMINO_ACIDS",
    "FEATURE_NAMES",
    "NUM_ATOM_FEATURES",
    "Chain",
    "ProteinDataset",
    "atom_features",
    "bundled_protein_files",
    "parse_structure",
    "principal_frame",
    "residue_position",
    "write_pdb",
]

# ------------------------------------------------------------------------------------------------
# Residue templates: heavy atoms (name, element) and intra-residue bonds (a, b, order).
# Backbone N-CA, CA-C, C=O and CA-CB are shared; peptide bonds C-N(next) are implicit.
# ------------------------------------------------------------------------------------------------

_BACKBONE = [("N", "CA", 1), ("CA", "C", 1), ("C", "O", 2)]
_SIDE: dict[str, list[tuple[str, str, int]]] = {
    "ALA": [("CA", "CB", 1)],
    "ARG": [
        ("CA", "CB", 1),
        ("CB", "CG", 1),
        ("CG", "CD", 1),
        ("CD", "NE", 1),
        ("NE", "CZ", 1),
        ("CZ", "NH1", 1),
        ("CZ", "NH2", 2),
    ],
    "ASN": [("CA", "CB", 1), ("CB", "CG", 1), ("CG", "OD1", 2), ("CG", "ND2", 1)],
    "ASP": [("CA", "CB", 1), ("CB", "CG", 1), ("CG", "OD1", 2), ("CG", "OD2", 1)],
    "CYS": [("CA", "CB", 1), ("CB", "SG", 1)],
    "GLN": [
        ("CA", "CB", 1),
        ("CB", "CG", 1),
        ("CG", "CD", 1),
        ("CD", "OE1", 2),
        ("CD", "NE2", 1),
    ],
    "GLU": [
        ("CA", "CB", 1),
        ("CB", "CG", 1),
        ("CG", "CD", 1),
        ("CD", "OE1", 2),
        ("CD", "OE2", 1),
    ],
    "GLY": [],
    "HIS": [
        ("CA", "CB", 1),
        ("CB", "CG", 1),
        ("CG", "ND1", 1),
        ("CG", "CD2", 2),
        ("ND1", "CE1", 2),
        ("CE1", "NE2", 1),
        ("NE2", "CD2", 1),
    ],
    "ILE": [("CA", "CB", 1), ("CB", "CG1", 1), ("CB", "CG2", 1), ("CG1", "CD1", 1)],
    "LEU": [("CA", "CB", 1), ("CB", "CG", 1), ("CG", "CD1", 1), ("CG", "CD2", 1)],
    "LYS": [("CA", "CB", 1), ("CB", "CG", 1), ("CG", "CD", 1), ("CD", "CE", 1), ("CE", "NZ", 1)],
    "MET": [("CA", "CB", 1), ("CB", "CG", 1), ("CG", "SD", 1), ("SD", "CE", 1)],
    "PHE": [
        ("CA", "CB", 1),
        ("CB", "CG", 1),
        ("CG", "CD1", 2),
        ("CD1", "CE1", 1),
        ("CE1", "CZ", 2),
        ("CZ", "CE2", 1),
        ("CE2", "CD2", 2),
        ("CD2", "CG", 1),
    ],
    "PRO": [("CA", "CB", 1), ("CB", "CG", 1), ("CG", "CD", 1), ("CD", "N", 1)],
    "SER": [("CA", "CB", 1), ("CB", "OG", 1)],
    "THR": [("CA", "CB", 1), ("CB", "OG1", 1), ("CB", "CG2", 1)],
    "TRP": [
        ("CA", "CB", 1),
        ("CB", "CG", 1),
        ("CG", "CD1", 2),
        ("CD1", "NE1", 1),
        ("NE1", "CE2", 1),
        ("CE2", "CD2", 2),
        ("CD2", "CG", 1),
        ("CE2", "CZ2", 1),
        ("CZ2", "CH2", 2),
        ("CH2", "CZ3", 1),
        ("CZ3", "CE3", 2),
        ("CE3", "CD2", 1),
    ],
    "TYR": [
        ("CA", "CB", 1),
        ("CB", "CG", 1),
        ("CG", "CD1", 2),
        ("CD1", "CE1", 1),
        ("CE1", "CZ", 2),
        ("CZ", "CE2", 1),
        ("CE2", "CD2", 2),
        ("CD2", "CG", 1),
        ("CZ", "OH", 1),
    ],
    "VAL": [("CA", "CB", 1), ("CB", "CG1", 1), ("CB", "CG2", 1)],
}
_CHARGES = {("ARG", "NH2"): 1, ("LYS", "NZ"): 1, ("ASP", "OD2"): -1, ("GLU", "OE2"): -1}
_RINGS: dict[str, list[tuple[str, ...]]] = {
    "PRO": [("N", "CA", "CB", "CG", "CD")],
    "PHE": [("CG", "CD1", "CE1", "CZ", "CE2", "CD2")],
    "TYR": [("CG", "CD1", "CE1", "CZ", "CE2", "CD2")],
    "HIS": [("CG", "ND1", "CE1", "NE2", "CD2")],
    "TRP": [("CG", "CD1", "NE1", "CE2", "CD2"), ("CD2", "CE2", "CZ2", "CH2", "CZ3", "CE3")],
}
_AROMATIC = {"PHE", "TYR", "HIS", "TRP"}  # their ring atoms (not proline's)
_ALIASES = {"MSE": ("MET", {"SE": "SD"})}  # selenomethionine read as methionine

AMINO_ACIDS = tuple(sorted(_SIDE))  # 20 three-letter codes; index 20 = unknown
ELEMENTS = ("C", "N", "O", "S")
HYBRIDISATIONS = ("sp", "sp2", "sp3", "sp3d", "sp3d2", "other")
NUM_EIGVECS = 6
_VALENCE = {"C": 4, "N": 3, "O": 2, "S": 2}

FEATURE_NAMES: tuple[str, ...] = (
    "residue_position",
    *(f"element_{e}" for e in (*ELEMENTS, "other")),
    "degree",
    "formal_charge",
    "implicit_valence",
    *(f"hybridisation_{h}" for h in HYBRIDISATIONS),
    "aromatic",
    "num_rings",
    *(f"laplacian_{k}" for k in range(NUM_EIGVECS)),
)
NUM_ATOM_FEATURES = len(FEATURE_NAMES) - 1  # without the residue position


@dataclass(frozen=True)
class _Template:
    atoms: tuple[str, ...]
    features: np.ndarray  # [A, NUM_ATOM_FEATURES] float32 (FEATURE_NAMES[1:])


def _build_template(res: str) -> _Template:
    bonds = _BACKBONE + _SIDE[res]
    atoms: list[str] = []
    for a, b, _ in bonds:
        for x in (a, b):
            if x not in atoms:
                atoms.append(x)
    idx = {a: i for i, a in enumerate(atoms)}
    n = len(atoms)
    adj = np.zeros((n, n))
    order_sum = np.zeros(n)
    double = np.zeros(n, dtype=bool)
    for a, b, o in bonds:
        adj[idx[a], idx[b]] = adj[idx[b], idx[a]] = 1
        order_sum[idx[a]] += o
        order_sum[idx[b]] += o
        if o == 2:
            double[idx[a]] = double[idx[b]] = True
    degree = adj.sum(1)
    # peptide bonds: N to the previous residue's C, C to the next residue's N (in-chain)
    for name in ("N", "C"):
        degree[idx[name]] += 1
        order_sum[idx[name]] += 1
    double_nb = {"N": True}  # the backbone N's other neighbour is the previous carbonyl C
    rings = _RINGS.get(res, [])
    feats = np.zeros((n, NUM_ATOM_FEATURES), dtype=np.float64)
    for i, name in enumerate(atoms):
        elem = name[0]
        charge = _CHARGES.get((res, name), 0)
        hs = _VALENCE[elem] + charge - order_sum[i]
        if hs < 0:
            raise AssertionError(f"template {res}:{name} over-bonded")
        in_rings = sum(name in r for r in rings)
        aromatic = res in _AROMATIC and in_rings > 0
        conj = elem in "NO" and (
            double_nb.get(name, False) or any(double[j] for j in np.flatnonzero(adj[i]))
        )
        hyb = "sp2" if (aromatic or double[i] or conj) else "sp3"
        row = [float(elem == e) for e in ELEMENTS] + [float(elem not in ELEMENTS)]
        row += [degree[i] / 4.0, float(charge), hs / 4.0]
        row += [float(hyb == h) for h in HYBRIDISATIONS]
        row += [float(aromatic), in_rings / 2.0]
        feats[i, : len(row)] = row
    # Laplacian eigenvectors of the residue's heavy-atom graph (intra-residue bonds)
    lap = np.diag(adj.sum(1)) - adj
    _, vecs = np.linalg.eigh(lap)
    vecs = vecs[:, 1 : 1 + NUM_EIGVECS]  # skip the constant eigenvector
    for k in range(vecs.shape[1]):
        j = int(np.argmax(np.abs(vecs[:, k]) - 1e-9 * np.arange(n)))  # first largest |entry|
        if vecs[j, k] < 0:
            vecs[:, k] = -vecs[:, k]
    feats[:, NUM_ATOM_FEATURES - NUM_EIGVECS : NUM_ATOM_FEATURES - NUM_EIGVECS + vecs.shape[1]] = (
        vecs
    )
    return _Template(tuple(atoms), feats.astype(np.float32))


_TEMPLATES: dict[str, _Template] = {res: _build_template(res) for res in AMINO_ACIDS}


def atom_features(residue: str) -> tuple[tuple[str, ...], np.ndarray]:
    """Heavy-atom names and their features ``[A, NUM_ATOM_FEATURES]`` for a residue type."""
    t = _TEMPLATES[residue]
    return t.atoms, t.features.copy()


def residue_position(index: np.ndarray | int, num_residues: int) -> np.ndarray:
    """Channel 0: centre of cell ``index`` of ``num_residues`` cells on [-1, 1]."""
    return -1.0 + (np.asarray(index, dtype=np.float64) + 0.5) * (2.0 / num_residues)


# ------------------------------------------------------------------------------------------------
# Parsing
# ------------------------------------------------------------------------------------------------

STRUCTURE_SUFFIXES = (".pdb", ".ent", ".cif", ".mmcif")


def _is_structure(name: str) -> bool:
    low = name.lower()
    low = low[:-3] if low.endswith(".gz") else low
    return low.endswith(STRUCTURE_SUFFIXES)


@dataclass
class Chain:
    """One parsed chain: per-residue types and per-atom template features and positions."""

    name: str
    residues: np.ndarray  # [L] int64 index into AMINO_ACIDS
    atom_residue: np.ndarray  # [A] int64 residue of each atom (0..L-1)
    atom_names: list[str]  # [A]
    features: np.ndarray  # [A, NUM_ATOM_FEATURES] float32
    xyz: np.ndarray  # [A, 3] float64, Å
    ca: np.ndarray  # [L] int64 atom index of each residue's CA (-1: missing)

    @property
    def length(self) -> int:
        return int(self.residues.shape[0])


def parse_structure(path: str | os.PathLike, chain: str | None = None) -> Chain:
    """Read one chain (default: the first with amino acids) of a PDB/mmCIF file (.gz allowed)."""
    try:
        from Bio.PDB import MMCIFParser, PDBParser
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "reading PDB/mmCIF files needs Biopython: pip install 'inrflow[protein]'"
        ) from exc
    path = str(path)
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as fh:
        text = fh.read()
    base = path[:-3] if path.endswith(".gz") else path
    parser = (
        MMCIFParser(QUIET=True)
        if base.lower().endswith((".cif", ".mmcif"))
        else PDBParser(QUIET=True)
    )
    structure = parser.get_structure(Path(base).stem, io.StringIO(text))
    model = next(iter(structure))
    chains = [c for c in model if chain is None or c.id == chain]
    for ch in chains:
        parsed = _read_chain(ch, Path(base).stem)
        if parsed is not None:
            return parsed
    raise ValueError(f"{path}: no chain{' ' + chain if chain else ''} with standard amino acids")


def _read_chain(ch: Any, name: str) -> Chain | None:
    residues, atom_res, names, feats, xyz, ca = [], [], [], [], [], []
    for res in ch:
        resname = res.get_resname().strip()
        rename: dict[str, str] = {}
        if resname in _ALIASES:
            resname, rename = _ALIASES[resname]
        if resname not in _TEMPLATES or res.id[0] not in (" ", "H_MSE"):
            continue
        tmpl = _TEMPLATES[resname]
        present = {}
        for atom in res:
            an = rename.get(atom.get_id(), atom.get_id())
            if an in tmpl.atoms:
                present[an] = atom.get_coord()
        if not present:
            continue
        r = len(residues)
        residues.append(AMINO_ACIDS.index(resname))
        ca.append(-1)
        for i, an in enumerate(tmpl.atoms):  # template order: N, CA, C, O, side chain
            if an not in present:
                continue
            if an == "CA":
                ca[-1] = len(names)
            atom_res.append(r)
            names.append(an)
            feats.append(tmpl.features[i])
            xyz.append(present[an])
    if not residues:
        return None
    return Chain(
        name=name,
        residues=np.asarray(residues, dtype=np.int64),
        atom_residue=np.asarray(atom_res, dtype=np.int64),
        atom_names=names,
        features=np.stack(feats).astype(np.float32),
        xyz=np.asarray(xyz, dtype=np.float64),
        ca=np.asarray(ca, dtype=np.int64),
    )


def bundled_protein_files() -> list[str]:
    """The 50 single-chain PDB files that ``MDAnalysisTests`` ships (``data/dssp``)."""
    spec = importlib.util.find_spec("MDAnalysisTests")  # locates the package without importing
    if spec is None or spec.origin is None:
        raise ImportError(
            "the bundled protein set comes from the MDAnalysisTests package: "
            "pip install 'inrflow[protein]'"
        )
    folder = Path(spec.origin).parent / "data" / "dssp"
    # skip the two fixtures that are not proteins of their own (a 2-residue file with broken
    # hydrogens and a duplicate of 1mr1D)
    files = sorted(
        str(p) for p in folder.glob("*.pdb.gz") if "_" not in p.name.removesuffix(".pdb.gz")
    )
    if not files:
        raise FileNotFoundError(f"no PDB files in {folder}")
    return files


def write_pdb(
    path: str | os.PathLike,
    xyz: np.ndarray | torch.Tensor,
    atom_names: list[str],
    residues: np.ndarray,
    atom_residue: np.ndarray,
    chain_id: str = "A",
) -> Path:
    """Minimal PDB (ATOM records) of ``xyz`` ``[A, 3]`` Å, e.g. a predicted structure."""
    xyz = np.asarray(xyz.detach().cpu() if isinstance(xyz, torch.Tensor) else xyz, dtype=float)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (name, r, (x, y, z)) in enumerate(zip(atom_names, atom_residue, xyz, strict=True)):
        res = AMINO_ACIDS[int(residues[r])] if residues[r] < len(AMINO_ACIDS) else "UNK"
        padded = f" {name:<3}" if len(name) < 4 else name
        lines.append(
            f"ATOM  {i + 1:5d} {padded:4s} {res:3s} {chain_id}{int(r) + 1:4d}    "
            f"{x:8.3f}{y:8.3f}{z:8.3f}  1.00  0.00          {name[0]:>2s}"
        )
    path.write_text("\n".join([*lines, "END", ""]))
    return path


# ------------------------------------------------------------------------------------------------
# Dataset
# ------------------------------------------------------------------------------------------------


def principal_frame(xyz: np.ndarray, ca: np.ndarray | None = None) -> np.ndarray:
    """Rotation ``R`` ``[3, 3]`` (rows = axes) putting centred ``xyz`` in its canonical frame.

    The axes are the principal axes of the Cα atoms (``ca``: their indices; all atoms without
    them), largest variance first. Each of the first two axes points to where the atoms' cubed
    projections sum positive (the longer tail), the third is their cross product, so ``R`` is a
    proper rotation (a mirror image would change the chirality). ``xyz @ R.T`` is then a
    function of the structure alone, not of how the file happened to orient it.
    """
    pts = xyz if ca is None or len(ca) < 3 else xyz[ca]
    pts = pts - pts.mean(0)
    _, vecs = np.linalg.eigh(pts.T @ pts)  # ascending eigenvalues
    axes = vecs[:, ::-1].T.copy()  # rows: largest variance first
    for k in range(2):
        if np.sum((pts @ axes[k]) ** 3) < 0:
            axes[k] = -axes[k]
    axes[2] = np.cross(axes[0], axes[1])
    return axes


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random rotation matrix (QR of a Gaussian matrix, sign-fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


class ProteinDataset(CoordinateDataset):
    """Heavy atoms of protein chains as (features -> position) pairs; see the module docstring.

    Args:
        source: a folder (searched recursively) or file of PDB/mmCIF structures (.gz allowed),
            a list of such files, or ``"proteins"`` for the bundled set.
        max_residues: residues per sample = latents of the model (default: the longest chain,
            rounded up to a multiple of 8); longer chains are cropped to a random window.
        num_atoms: atoms per sample (default: the most any window of the set holds).
        split: ``all``, ``train`` or ``test``: every ``holdout_every``-th chain (sorted by name)
            is held out for testing.
        frame: ``principal`` (default): each sample is put in the canonical frame of its Cα
            atoms (:func:`principal_frame`), so a chain's target is one structure, not every
            rotation of it; ``file``: the orientation of the file, only centred.
        rotate: random rotation of each training sample on top of the frame (augmentation; off
            by default: the model is not rotation-equivariant, and a small model learns the
            rotation-averaged target far more slowly than the canonical one).
        position_scale: Å per unit of the values.
        residue_embeddings: an .npz with one ``[L, E]`` array per chain name (file stem), used
            as coordinate channels instead of the learned residue-type table.
    """

    domain = "protein"
    value_dim = 3

    def __init__(
        self,
        source: str | os.PathLike | list[str],
        *,
        max_residues: int | None = None,
        num_atoms: int | None = None,
        split: str = "all",
        holdout_every: int = 10,
        frame: str = "principal",
        rotate: bool = False,
        position_scale: float = 10.0,
        residue_embeddings: str | os.PathLike | None = None,
        chains: list[Chain] | None = None,
    ) -> None:
        if split not in ("all", "train", "test"):
            raise ValueError(f"split must be all|train|test, got {split!r}")
        if chains is None:
            chains = [parse_structure(f) for f in _structure_files(source)]
        if not chains:
            raise ValueError(f"no protein chains in {source!r}")
        self.all_chains = chains
        self.source, self.holdout_every = source, holdout_every
        if frame not in ("principal", "file"):
            raise ValueError(f"frame must be principal|file, got {frame!r}")
        self.split, self.frame, self.rotate = split, frame, rotate
        self.position_scale = float(position_scale)
        longest = max(c.length for c in chains)
        self.max_residues = int(max_residues or -(-longest // 8) * 8)
        if self.max_residues < 1:
            raise ValueError(f"max_residues must be >= 1, got {max_residues}")
        most = max(self._max_window_atoms(c) for c in chains)
        self.num_atoms = int(num_atoms or most)
        if self.num_atoms < most:
            raise ValueError(
                f"num_atoms={self.num_atoms} is fewer than the {most} atoms of the largest "
                f"window of {self.max_residues} residues"
            )
        self.shape = (self.num_atoms,)
        self.embeddings_path = str(residue_embeddings) if residue_embeddings else None
        self.embeddings: dict[str, np.ndarray] | None = None
        if residue_embeddings is not None:
            with np.load(residue_embeddings, allow_pickle=False) as z:
                self.embeddings = {k: np.asarray(z[k], dtype=np.float32) for k in z.files}
            widths = set()
            for c in chains:
                e = self.embeddings.get(c.name)
                if e is None:
                    raise KeyError(f"{residue_embeddings}: no embedding for chain {c.name!r}")
                if e.ndim != 2 or e.shape[0] != c.length:
                    raise ValueError(
                        f"{residue_embeddings}: {c.name!r} needs [{c.length}, E], got {e.shape}"
                    )
                widths.add(e.shape[1])
            if len(widths) != 1:
                raise ValueError(f"{residue_embeddings}: embeddings differ in width {widths}")
            self.embed_dim = widths.pop()
        else:
            self.embed_dim = 0
        # position + atom features + (residue-type index | E embedding channels)
        self.coord_dim = 1 + NUM_ATOM_FEATURES + (self.embed_dim or 1)
        self.residue_vocab = 0 if self.embeddings is not None else len(AMINO_ACIDS) + 1
        n = len(chains)
        test = {i for i in range(n) if n >= 2 and i % holdout_every == holdout_every - 1}
        keep = {"all": range(n), "train": [i for i in range(n) if i not in test]}
        keep["test"] = sorted(test)
        self.indices = list(keep[split])
        if not self.indices:
            raise ValueError(f"the {split!r} split of {source!r} is empty")

    def _max_window_atoms(self, c: Chain) -> int:
        counts = np.bincount(c.atom_residue, minlength=c.length)
        k = min(self.max_residues, c.length)
        csum = np.concatenate([[0], np.cumsum(counts)])
        return int((csum[k:] - csum[:-k]).max())

    def heldout(self) -> ProteinDataset:
        """The ``test`` split over the same chains, sample sizes and embeddings."""
        return self.with_split("test")

    def with_split(self, split: str) -> ProteinDataset:
        return ProteinDataset(
            self.source,
            max_residues=self.max_residues,
            num_atoms=self.num_atoms,
            split=split,
            holdout_every=self.holdout_every,
            frame=self.frame,
            rotate=self.rotate,
            position_scale=self.position_scale,
            residue_embeddings=self.embeddings_path,
            chains=self.all_chains,
        )

    def __len__(self) -> int:
        return len(self.indices)

    def chain(self, index: int) -> Chain:
        return self.all_chains[self.indices[index]]

    def describe(self, index: int) -> str:
        return f"protein chain {self.chain(index).name!r}"

    def example(
        self, index: int, rng: np.random.Generator | None = None, start: int | None = None
    ) -> dict[str, Any]:
        """Item ``index`` with everything needed to score a prediction.

        ``start`` fixes the crop window (default: random from ``rng``, or the centre window
        without one); without ``rng`` there is no rotation and padding repeats atoms in order.
        """
        c = self.chain(index)
        k = self.max_residues
        if c.length > k:
            if start is None:
                start = (
                    int(rng.integers(0, c.length - k + 1))
                    if rng is not None
                    else (c.length - k) // 2
                )
        else:
            start = 0
        stop = min(c.length, start + k)
        atoms = np.flatnonzero((c.atom_residue >= start) & (c.atom_residue < stop))
        real = atoms.shape[0]
        xyz = c.xyz[atoms]
        xyz = xyz - xyz.mean(0)
        ca = c.ca[start:stop]
        ca_local = np.searchsorted(atoms, ca)  # position of each CA among the window's atoms
        if self.frame == "principal":
            xyz = xyz @ principal_frame(xyz, ca_local[ca >= 0]).T
        if rng is not None and self.rotate:
            xyz = xyz @ _random_rotation(rng).T
        res = c.atom_residue[atoms] - start
        coords = np.concatenate(
            [
                residue_position(res, k)[:, None],
                c.features[atoms],
                self._residue_channels(c, res + start),
            ],
            axis=1,
        )
        pad = self.num_atoms - real
        order = np.arange(real)
        if pad > 0:
            extra = rng.integers(0, real, size=pad) if rng is not None else np.arange(pad) % real
            order = np.concatenate([order, extra])
        return {
            "values": self._tensor(xyz[order] / self.position_scale),
            "coords": self._tensor(coords[order]),
            "label": torch.tensor(0),
            "num_real": real,
            "atom_index": atoms,
            "ca_index": np.where(ca >= 0, ca_local, -1),
            "xyz": xyz,
            "start": start,
        }

    def _residue_channels(self, c: Chain, res: np.ndarray) -> np.ndarray:
        if self.embeddings is not None:
            return self.embeddings[c.name][res]
        return c.residues[res].astype(np.float32)[:, None]

    def load(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        ex = self.example(index, rng)
        return {"values": ex["values"], "coords": ex["coords"], "label": ex["label"]}


def _structure_files(source: str | os.PathLike | list[str]) -> list[str]:
    if isinstance(source, list | tuple):
        return [str(s) for s in source]
    if str(source) == "proteins":
        return bundled_protein_files()
    path = Path(source).expanduser()
    if path.is_file():
        return [str(path)]
    if not path.exists():
        raise FileNotFoundError(f"protein path {str(path)!r} does not exist")
    files = sorted(
        os.path.join(d, f)
        for d, _, fs in os.walk(path, followlinks=True)
        for f in fs
        if _is_structure(f)
    )
    if not files:
        raise ValueError(f"no PDB/mmCIF files ({', '.join(STRUCTURE_SUFFIXES)}[.gz]) in {path}")
    return files
