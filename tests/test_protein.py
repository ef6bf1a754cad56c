"""Proteins: template atom features, PDB/mmCIF loading, the residue-grouped dataset and model,
the metrics on real chains, and the train.py/sample.py protein path end to end (tiny)."""

from __future__ import annotations

import gzip
import io
import json
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("Bio.PDB")

from inrflow.data.proteins import (
    AMINO_ACIDS,
    FEATURE_NAMES,
    NUM_ATOM_FEATURES,
    Chain,
    ProteinDataset,
    atom_features,
    bundled_protein_files,
    parse_structure,
    principal_frame,
    write_pdb,
)
from inrflow.domains import build_dataset
from inrflow.metrics import lddt, tm_score
from inrflow.model import build_model
from inrflow.train.config import parse_args

F = {name: i - 1 for i, name in enumerate(FEATURE_NAMES)}  # index into the atom features


def feat(res: str, atom: str, name: str) -> float:
    atoms, f = atom_features(res)
    return float(f[atoms.index(atom), F[name]])


@pytest.fixture(scope="module")
def files() -> list[str]:
    try:
        return bundled_protein_files()
    except ImportError:
        pytest.skip("MDAnalysisTests (the bundled protein set) is not installed")


@pytest.fixture(scope="module")
def dataset(files) -> ProteinDataset:
    return ProteinDataset(files[:12], split="train")


# --- templates -----------------------------------------------------------------------------------


def test_template_features_follow_chemistry() -> None:
    assert len(AMINO_ACIDS) == 20 and len(FEATURE_NAMES) == NUM_ATOM_FEATURES + 1
    for res in AMINO_ACIDS:
        atoms, f = atom_features(res)
        assert atoms[:4] == ("N", "CA", "C", "O") and f.shape == (len(atoms), NUM_ATOM_FEATURES)
        onehots = [n for n in FEATURE_NAMES if n.startswith(("element_", "hybridisation_"))]
        el = [F[n] for n in onehots if n.startswith("element_")]
        hy = [F[n] for n in onehots if n.startswith("hybridisation_")]
        np.testing.assert_array_equal(f[:, el].sum(1), 1)
        np.testing.assert_array_equal(f[:, hy].sum(1), 1)
    # hydrogens (implicit valence / 4), charges, degrees
    assert feat("LYS", "NZ", "formal_charge") == 1 and feat("LYS", "NZ", "implicit_valence") == 0.75
    assert feat("ASP", "OD2", "formal_charge") == -1 and feat("GLU", "OE2", "formal_charge") == -1
    assert feat("GLY", "CA", "implicit_valence") == 0.5  # two H on glycine's CA
    assert (
        feat("ALA", "N", "implicit_valence") == 0.25 and feat("PRO", "N", "implicit_valence") == 0
    )
    assert feat("PRO", "N", "degree") == 0.75 and feat("ALA", "C", "degree") == 0.75
    # aromaticity, rings, hybridisation
    assert feat("PHE", "CZ", "aromatic") == 1 and feat("PHE", "CZ", "num_rings") == 0.5
    assert feat("PRO", "CG", "aromatic") == 0 and feat("PRO", "CG", "num_rings") == 0.5
    assert feat("TRP", "CD2", "num_rings") == 1.0 and feat("TRP", "CE2", "num_rings") == 1.0
    assert feat("HIS", "ND1", "aromatic") == 1
    for res, atom in [("ALA", "N"), ("ASN", "ND2"), ("ARG", "NE"), ("TYR", "OH"), ("ALA", "O")]:
        assert feat(res, atom, "hybridisation_sp2") == 1, (res, atom)
    for res, atom in [("ALA", "CA"), ("LYS", "NZ"), ("SER", "OG"), ("MET", "SD")]:
        assert feat(res, atom, "hybridisation_sp3") == 1, (res, atom)
    # Laplacian eigenvectors tell apart the atoms of a residue (up to chemical symmetry)
    atoms, f = atom_features("LYS")
    assert len({tuple(np.round(r, 5)) for r in f}) == len(atoms)


def test_template_hydrogens_match_real_structures(files) -> None:
    """The bundled files carry hydrogens: count them per heavy atom (nearest heavy atom within
    1.3 Å) and compare with the templates on interior residues without ionisable or tautomeric
    side chains (whose protonation the file may choose differently)."""
    from Bio.PDB import PDBParser

    skip = {"HIS", "ASP", "GLU", "LYS", "ARG", "CYS", "TYR"}
    agree = total = used = 0
    for path in files:
        with gzip.open(path, "rt") as fh:
            text = fh.read()
        if text.count(" HA ") < 20:  # most files were deposited without hydrogens
            continue
        used += 1
        if used > 3:
            break
        chain = next(iter(PDBParser(QUIET=True).get_structure("x", io.StringIO(text))[0]))
        residues = [r for r in chain if r.id[0] == " "]
        for r in residues[1:-1]:
            name = r.get_resname()
            if name in skip or name not in AMINO_ACIDS:
                continue
            heavy = [a for a in r if a.element != "H" and not a.get_id().startswith("H")]
            hyd = [a for a in r if a.element == "H" or a.get_id().startswith("H")]
            if not hyd:
                continue
            hx = np.array([a.coord for a in heavy])
            counts = dict.fromkeys((a.get_id() for a in heavy), 0)
            for h in hyd:
                d = np.linalg.norm(hx - h.coord, axis=1)
                if d.min() < 1.3:
                    counts[heavy[int(d.argmin())].get_id()] += 1
            atoms, f = atom_features(name)
            for a, c in counts.items():
                if a in atoms:
                    total += 1
                    agree += round(f[atoms.index(a), F["implicit_valence"]] * 4) == c
    assert total > 500
    assert agree / total > 0.98, (agree, total)


# --- parsing ---------------------------------------------------------------------------------


def test_parse_pdb_and_mmcif_agree(files, tmp_path) -> None:
    from Bio.PDB import MMCIFIO, PDBParser

    c = parse_structure(files[0])
    assert c.length > 50 and len(c.atom_names) == c.xyz.shape[0] == c.features.shape[0]
    assert (c.ca >= 0).all() and all(c.atom_names[i] == "CA" for i in c.ca)
    assert not any(n.startswith("H") for n in c.atom_names)  # heavy atoms only
    with gzip.open(files[0], "rt") as fh:
        s = PDBParser(QUIET=True).get_structure("x", fh)
    writer = MMCIFIO()
    writer.set_structure(s)
    writer.save(str(tmp_path / "x.cif"))
    d = parse_structure(tmp_path / "x.cif")
    np.testing.assert_array_equal(c.residues, d.residues)
    np.testing.assert_allclose(c.xyz, d.xyz, atol=1e-3)
    # our own PDB writer round-trips
    write_pdb(tmp_path / "w.pdb", c.xyz, c.atom_names, c.residues, c.atom_residue)
    e = parse_structure(tmp_path / "w.pdb")
    np.testing.assert_array_equal(c.residues, e.residues)
    np.testing.assert_allclose(c.xyz, e.xyz, atol=1e-3)


# --- dataset ---------------------------------------------------------------------------------


def test_dataset_items(dataset: ProteinDataset) -> None:
    ds = dataset
    assert len(ds) == 11 and len(ds.heldout()) == 1  # every 10th chain is held out
    train = {ds.chain(i).name for i in range(len(ds))}
    assert ds.heldout().chain(0).name not in train
    it = ds[(3, 42)]
    assert it["values"].shape == (ds.num_atoms, 3) and it["coords"].shape == (ds.num_atoms, 24)
    torch.testing.assert_close(ds[(3, 42)]["values"], it["values"])  # a function of the seed
    assert not torch.equal(ds[(3, 43)]["values"], it["values"])  # another rotation / padding
    ex = ds.example(3, np.random.default_rng(42))
    real = ex["num_real"]
    v = ex["values"].double() * ds.position_scale
    # centred, rotated: distances are the true ones
    c = ds.chain(3)
    assert abs(float(v[:real].mean(0).abs().max())) < 1e-4
    true = torch.from_numpy(c.xyz)
    torch.testing.assert_close(
        torch.cdist(v[:real], v[:real]), torch.cdist(true, true), atol=1e-3, rtol=0
    )
    # padding repeats real atoms (same features and positions)
    coords = ex["coords"]
    for j in range(real, ds.num_atoms):
        match = (coords[:real] == coords[j]).all(1) & (ex["values"][:real] == ex["values"][j]).all(
            1
        )
        assert match.any()


def test_principal_frame_is_canonical(dataset: ProteinDataset) -> None:
    """The training target of a chain is one structure, whatever the file's orientation."""
    ex = dataset.example(2)
    xyz, ca = ex["xyz"], ex["ca_index"][ex["ca_index"] >= 0]
    rot, _ = np.linalg.qr(np.random.default_rng(3).standard_normal((3, 3)))
    rot *= np.sign(np.linalg.det(rot))  # a proper rotation
    r1, r2 = principal_frame(xyz, ca), principal_frame(xyz @ rot.T, ca)
    np.testing.assert_allclose(xyz @ r1.T, (xyz @ rot.T) @ r2.T, atol=1e-8)
    assert np.linalg.det(r1) == pytest.approx(1.0)  # no mirror image: chirality is kept
    var = (xyz[ca] @ r1.T).var(0)
    assert var[0] >= var[1] >= var[2]  # largest spread first
    # the dataset's values are in that frame, the same for every draw without rotation
    np.testing.assert_allclose(xyz, ex["xyz"])
    assert not dataset.rotate and dataset.frame == "principal"
    a, b = (
        dataset.example(2, np.random.default_rng(0)),
        dataset.example(2, np.random.default_rng(1)),
    )
    np.testing.assert_allclose(a["xyz"], b["xyz"])
    rotated = dataset.with_split("train")
    rotated.rotate = True
    c = rotated.example(2, np.random.default_rng(0))
    assert not np.allclose(c["xyz"], a["xyz"])  # augmentation, when asked for
    centred = ProteinDataset(dataset.source, split="train", frame="file", chains=dataset.all_chains)
    f = centred.example(2)["xyz"]
    c2 = dataset.chain(2)
    np.testing.assert_allclose(f, c2.xyz[ex["atom_index"]] - c2.xyz[ex["atom_index"]].mean(0))


def test_atom_prediction_reads_its_own_residue_latent(dataset: ProteinDataset) -> None:
    """query_reads_group: an atom's velocity depends on its residue's latent, and no other
    atom's does (the decoder's keys/values are held fixed, so only the direct path counts)."""
    ds = dataset
    torch.manual_seed(0)
    model = build_model("tiny", "protein", coord_dim=ds.coord_dim, num_latents=ds.max_residues)
    model.eval()
    torch.nn.init.normal_(model.final.linear.weight, std=0.1)  # zero-init: output would be 0
    ex = ds.example(0)
    coords, values = ex["coords"][None], torch.randn(1, ds.num_atoms, 3)
    with torch.no_grad():
        enc = model.encode(coords, values, torch.tensor([0.3]))
        base = model.decode(enc, coords, values)
        lat = enc.latents.clone()
        lat[0, 5] += torch.randn(lat.shape[-1])
        moved = model.decode(enc._replace(latents=lat), coords, values)
    real = ex["num_real"]
    res = ds.chain(0).atom_residue[ex["atom_index"]]
    change = (moved - base).abs().amax(-1)[0, :real].numpy()
    assert change[res == 5].min() > 1e-3
    assert change[res != 5].max() == 0.0


def test_rope_over_residue_latents_is_one_dimensional(dataset: ProteinDataset, monkeypatch) -> None:
    """RoPE in the trunk rotates by the residue index alone (cell units: i + 0.5), whatever the
    width of the atom features, so it fits a head of 16 channels; and it changes the output."""
    import inrflow.model.network as network

    ds = dataset
    kw = dict(coord_dim=ds.coord_dim, num_latents=ds.max_residues)
    on = build_model("tiny", "protein", rope=True, **kw)
    assert on.config.rope_dim == 1 and on.config.head_dim == 16 < 2 * on.config.feature_dim
    off = build_model("tiny", "protein", rope=False, **kw)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in on.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    off.load_state_dict(on.state_dict())
    seen = []
    real_tables = network.rope_tables
    monkeypatch.setattr(
        network, "rope_tables", lambda pos, *a: seen.append(pos) or real_tables(pos, *a)
    )
    ex = ds.example(0)
    coords, values = ex["coords"][None], torch.randn(1, ds.num_atoms, 3)
    with torch.no_grad():
        a = on(coords, values, torch.tensor([0.4]), coords, values)
        b = off(coords, values, torch.tensor([0.4]), coords, values)
    (pos,) = seen
    torch.testing.assert_close(pos, torch.arange(ds.max_residues).float()[:, None] + 0.5)
    assert not torch.allclose(a, b)


def test_value_embedding_sees_the_magnitude() -> None:
    """LN(W v) is blind to |v| (until its bias learns otherwise); the Fourier branch is not."""
    from inrflow.model.embeddings import ValueEmbedder

    torch.manual_seed(0)
    v = torch.randn(5, 3)
    plain = ValueEmbedder(3, 32)
    torch.nn.init.zeros_(plain.proj.bias)
    torch.testing.assert_close(plain(v), plain(2 * v), atol=1e-3, rtol=0)  # up to LN eps
    rich = ValueEmbedder(3, 32, fourier_freqs=4)
    assert (rich(v) - rich(2 * v)).abs().max() > 1e-2


def test_residue_grouping_puts_each_residue_in_its_latent(dataset: ProteinDataset) -> None:
    ds = dataset
    model = build_model("tiny", "protein", coord_dim=ds.coord_dim, num_latents=ds.max_residues)
    ex = ds.example(0)
    idx, _ = model.grouping.assign(model._features(ex["coords"][None]))
    c = ds.chain(0)
    real = ex["num_real"]
    np.testing.assert_array_equal(idx[0, :real].numpy(), c.atom_residue[ex["atom_index"]])
    assert int(idx.max()) < c.length  # latents past the chain's end stay empty


def test_cropping_and_precomputed_embeddings(files, tmp_path) -> None:
    chains = [parse_structure(f) for f in files[:3]]
    emb = {c.name: np.random.default_rng(0).standard_normal((c.length, 5)) for c in chains}
    np.savez(tmp_path / "emb.npz", **emb)
    ds = ProteinDataset(files[:3], max_residues=32, residue_embeddings=tmp_path / "emb.npz")
    assert ds.coord_dim == 1 + NUM_ATOM_FEATURES + 5 and ds.residue_vocab == 0
    ex = ds.example(0, np.random.default_rng(1))
    res = ds.chain(0).atom_residue[ex["atom_index"]]
    assert res.max() - res.min() < 32  # a window of at most 32 residues
    np.testing.assert_allclose(
        ex["coords"][: ex["num_real"], -5:].numpy(), emb[ds.chain(0).name][res], rtol=1e-6
    )
    with pytest.raises(KeyError):
        np.savez(tmp_path / "bad.npz", nothing=np.zeros((3, 5)))
        ProteinDataset(files[:3], residue_embeddings=tmp_path / "bad.npz")
    folder = tmp_path / "pdbs"
    folder.mkdir()
    for f in files[:2]:
        shutil.copy(f, folder)
    found = build_dataset(str(folder))  # recognised by the file suffixes (.pdb.gz)
    assert isinstance(found, ProteinDataset) and len(found) == 2


def test_metrics_on_a_real_chain(files) -> None:
    c = parse_structure(files[0])
    ca = torch.from_numpy(c.xyz[c.ca])
    q, _ = torch.linalg.qr(
        torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    )
    moved = ca @ q.T + torch.tensor([5.0, -3.0, 2.0], dtype=torch.float64)
    assert lddt(ca, ca) == pytest.approx(1.0) and lddt(moved, ca) == pytest.approx(1.0)
    assert tm_score(moved, ca) == pytest.approx(1.0, abs=1e-6)
    g = torch.Generator().manual_seed(1)
    small = ca + 0.5 * torch.randn(ca.shape, dtype=torch.float64, generator=g)
    large = ca + 3.0 * torch.randn(ca.shape, dtype=torch.float64, generator=g)
    assert 1.0 > lddt(small, ca) > lddt(large, ca) and 1.0 > tm_score(small, ca) > tm_score(
        large, ca
    )


# --- train.py / sample.py ------------------------------------------------------------------------


def test_task_protein_alone_is_the_bundled_demo() -> None:
    cfg = parse_args(["--task", "protein"])
    assert cfg.data == "proteins" and cfg.task == "protein" and cfg.size == "tiny"
    assert parse_args(["--task", "protein", "--data", "x"]).data == "x"


def test_train_and_sample_protein_end_to_end(files, tmp_path, capsys) -> None:
    from inrflow.cli.sample import main as sample_main
    from inrflow.train.cli import main as train_main

    data = tmp_path / "pdbs"
    data.mkdir()
    for f in files[:10]:  # 9 train chains, 1 held out
        shutil.copy(f, data)
    out = tmp_path / "run"
    argv = ["--preset", "protein", "--data", str(data), "--steps", "4", "--batch-size", "2"]
    argv += ["--sample-every", "2", "--ckpt-every", "0"]
    argv += ["--max-residues", "176", "--sample-steps", "2", "--out", str(out), "--no-tensorboard"]
    assert train_main(argv) == 0
    scores = json.loads((out / "final_scores.json").read_text())
    assert set(scores) == {"lddt_ca", "tm_score", "chains", "train", "report"}
    assert len(scores["chains"]) == 1 and len(scores["train"]["chains"]) == 9
    assert 0 <= scores["lddt_ca"] <= 1 and 0 < scores["tm_score"] <= 1
    report = scores["report"]
    assert set(report) == {"training", "held-out"}
    for split in report.values():  # the model beside its baselines on both splits
        assert set(split) == {"model", "untrained", "helix", "straight"}
    assert report["held-out"]["model"]["chains"] == scores["chains"]
    (name,) = scores["chains"]
    assert (out / "samples" / "final" / "held-out" / f"{name}_pred.pdb").exists()
    assert (out / "samples" / "final" / "training" / "traces.png").exists()
    head, *rows = (out / "protein_scores.csv").read_text().splitlines()  # the learning curve
    assert head.split(",")[:4] == [
        "step",
        "training_lddt_ca",
        "training_tm_score",
        "training_chains",
    ]
    # one evaluation at step 2, one at the end (not a periodic one and the final one at step 4)
    assert [r.split(",")[0] for r in rows] == ["2", "4"]
    assert all(r.split(",")[3] == "9" for r in rows)
    pred = tmp_path / "pred"
    argv = ["--ckpt", str(out), "--structures", files[0], "--steps", "2", "--out", str(pred)]
    capsys.readouterr()
    assert sample_main([*argv, "--device", "cpu"]) == 0
    assert "NFE 2" in capsys.readouterr().out  # every sampling run reports its model calls
    again = json.loads((pred / "scores.json").read_text())
    assert list(again["chains"]) == [parse_structure(files[0]).name]
    assert parse_structure(next(pred.glob("*_pred.pdb"))).length == parse_structure(files[0]).length


def test_train_with_residue_embeddings_from_a_folder(files, tmp_path) -> None:
    """The path to real data: a folder of PDBs and per-residue embeddings computed elsewhere
    (e.g. a protein language model), one [L, E] array per chain keyed by the file stem. Two
    steps train; the embeddings are the last E coordinate channels and the model reads them."""
    from inrflow.train.config import PRESETS, TrainConfig
    from inrflow.train.trainer import Trainer

    data = tmp_path / "pdbs"
    data.mkdir()
    for f in files[:10]:
        shutil.copy(f, data)
    chains = [parse_structure(f) for f in files[:10]]
    e = 7
    rng = np.random.default_rng(0)
    emb = {c.name: rng.standard_normal((c.length, e)).astype(np.float32) for c in chains}
    np.savez(tmp_path / "emb.npz", **emb)
    cfg = TrainConfig(**PRESETS["protein"])
    cfg.data, cfg.residue_embeddings = str(data), str(tmp_path / "emb.npz")
    cfg.steps, cfg.batch_size, cfg.sample_steps, cfg.max_residues = 2, 2, 2, 176
    cfg.out, cfg.tensorboard, cfg.ckpt_every = str(tmp_path / "run"), False, 0
    trainer = Trainer(cfg)
    try:
        ds = trainer.dataset
        assert len(ds) == 9 and len(ds.heldout()) == 1  # every 10th chain is held out
        assert ds.coord_dim == 1 + NUM_ATOM_FEATURES + e and ds.num_atoms == ds.shape[0]
        cfg_m = trainer.model_config
        assert cfg_m.coord_dim == ds.coord_dim and cfg_m.residue_vocab == 0
        assert cfg_m.num_latents == 176 and trainer.model.residue_embed is None
        batch = next(iter(trainer.loader))
        assert batch["coords"].shape == (2, ds.num_atoms, ds.coord_dim)
        ex = ds.example(0)
        res = ds.chain(0).atom_residue[ex["atom_index"]]
        np.testing.assert_array_equal(
            ex["coords"][: ex["num_real"], -e:].numpy(), emb[ds.chain(0).name][res]
        )
        summary = trainer.train()
        assert summary["step"] == 2 and 0 <= summary["train_lddt_ca"] <= 1
        model = trainer.sample_model()
        coords, values = ex["coords"][None], torch.randn(1, ds.num_atoms, 3)
        shuffled = coords.clone()
        shuffled[..., -e:] = shuffled[..., -e:].flip(1)  # other residues' embeddings
        with torch.no_grad():
            a = model(coords, values, torch.tensor([0.5]), coords, values)
            b = model(shuffled, values, torch.tensor([0.5]), shuffled, values)
        assert (a - b).abs().max() > 1e-6  # the embeddings reach the velocity
    finally:
        trainer.close()


# --- scoring: idealised chains, the report -------------------------------------------------------


def test_ideal_chains_have_the_peptide_spacing() -> None:
    from inrflow.domains.folding import CA_CA_DISTANCE, ideal_chain

    for kind in ("helix", "straight"):
        ca = ideal_chain(30, kind)
        assert ca.shape == (30, 3)
        steps = np.linalg.norm(np.diff(ca, axis=0), axis=1)
        np.testing.assert_allclose(steps, CA_CA_DISTANCE, atol=0.05)
    helix = ideal_chain(30, "helix")
    i_3 = np.linalg.norm(helix[3:] - helix[:-3], axis=1)
    i_4 = np.linalg.norm(helix[4:] - helix[:-4], axis=1)
    # an α-helix: i->i+3 about 5.0-5.4 Å, i->i+4 about 6.2 Å (a straight chain: 11.4, 15.2)
    assert np.all((i_3 > 4.8) & (i_3 < 5.6)) and np.all((i_4 > 5.8) & (i_4 < 6.6))
    with pytest.raises(ValueError, match="kind"):
        ideal_chain(5, "sheet")
    with pytest.raises(ValueError, match="num_residues"):
        ideal_chain(0)


def _alanine_chain(ca: np.ndarray) -> Chain:
    """A poly-alanine chain whose Cα atoms are ``ca``; the other heavy atoms sit near them."""
    atoms, f = atom_features("ALA")
    n = len(ca)
    offsets = {a: np.eye(3)[k % 3] * (1 + k) * 0.3 for k, a in enumerate(atoms)}
    xyz = np.concatenate(
        [[ca[i] + (0 if a == "CA" else offsets[a]) for a in atoms] for i in range(n)]
    )
    return Chain(
        name=f"helix{n}",
        residues=np.full(n, AMINO_ACIDS.index("ALA")),
        atom_residue=np.repeat(np.arange(n), len(atoms)),
        atom_names=list(atoms) * n,
        features=np.tile(f, (n, 1)),
        xyz=xyz,
        ca=np.arange(n) * len(atoms) + atoms.index("CA"),
    )


def test_ideal_chain_scores_are_the_metrics_of_the_ideal_trace() -> None:
    from inrflow.domains.folding import ideal_chain, ideal_chain_scores

    helix = _alanine_chain(ideal_chain(40, "helix"))
    other = _alanine_chain(ideal_chain(25, "straight") + np.array([0.0, 1.0, 0.0]))
    ds = ProteinDataset("unused", chains=[helix, other])
    s = ideal_chain_scores(ds, "helix")  # the helix scored against itself, rotated by its frame
    assert s["chains"]["helix40"]["lddt_ca"] == pytest.approx(1.0)
    assert s["chains"]["helix40"]["tm_score"] == pytest.approx(1.0, abs=1e-6)
    straight = ideal_chain_scores(ds, "straight", [1])
    assert list(straight["chains"]) == ["helix25"]  # chain 1 only (named by the helper)
    assert (
        straight["lddt_ca"] == pytest.approx(1.0)
        and straight["chains"]["helix25"]["residues"] == 25
    )
    mixed = ideal_chain_scores(ds, "straight")
    ca = helix.xyz[helix.ca]
    expected = lddt(ideal_chain(40, "straight"), ca - ca.mean(0))
    assert mixed["chains"]["helix40"]["lddt_ca"] == pytest.approx(expected)
    assert mixed["lddt_ca"] == pytest.approx((expected + 1.0) / 2)


def test_spaced_and_report_table() -> None:
    from inrflow.domains.folding import report_table, spaced

    assert spaced(5, 12) == [0, 1, 2, 3, 4]
    assert spaced(45, 12)[0] == 0 and spaced(45, 12)[-1] == 44 and len(spaced(45, 12)) == 12
    with pytest.raises(ValueError):
        spaced(3, 0)

    def row(v: float, n: int) -> dict:
        return {"lddt_ca": v, "tm_score": v / 2, "chains": dict.fromkeys(range(n))}

    report = {
        "training": {"model": row(0.6, 45), "helix": row(0.2, 45), "straight": row(0.08, 45)},
        "held-out": {"model": row(0.15, 5), "helix": row(0.21, 5), "straight": row(0.07, 5)},
    }
    lines = report_table(report, "model (step 9)").splitlines()
    assert "training chains (45)" in lines[0] and "held-out chains (5)" in lines[0]
    assert lines[1].startswith("model (step 9)") and "0.600 / 0.300" in lines[1]
    assert "0.150 / 0.075" in lines[1]
    assert len(lines) == 4  # no untrained row when it was not scored
