"""Distillation from frozen ReDimNet teachers into a Matryoshka student, and the router baseline."""

import pytest
import torch
from torch import nn

from mrl_dist.config import DistillLossesConfig, TeacherConfig
from mrl_dist.losses import MatryoshkaAAMLoss
from mrl_dist.models import CheckpointError, ReDimNetMRL, build_preset, preset_config, save_official_checkpoint
from mrl_dist.models.ensemble import EnsembleRouter
from mrl_dist.train.distill import (
    DistillationAdapters,
    DistillationLoss,
    TeacherEmbeddingCache,
    build_distillation_loss,
    cached_teacher_embeddings,
    cosine_matrix,
    embedding_distance,
    load_teachers,
    open_teacher_caches,
    similarity_distance,
    teacher_embeddings,
)

STUDENT_DIMS = [16, 32, 64]
WAVE = torch.randn(4, 8000, generator=torch.Generator().manual_seed(0))  # 4 crops of 0.5 s


def random_orthogonal(n: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed)))
    return q


@pytest.fixture(scope="module")
def teacher_files(tmp_path_factory):
    """A small (32-D) and a large (64-D) tiny ReDimNet, saved as official-format files."""
    folder = tmp_path_factory.mktemp("teachers")
    paths = []
    for name, embed_dim in (("small", 32), ("large", 64)):
        torch.manual_seed(embed_dim)
        paths.append(save_official_checkpoint(build_preset("tiny", embed_dim=embed_dim).eval(), folder / f"{name}.pt"))
    return paths


@pytest.fixture(scope="module")
def teacher_configs(teacher_files):
    small, large = teacher_files
    return [
        TeacherConfig(source=str(small), dims=[16, 32], weight=1.0),
        TeacherConfig(source=str(large), dims=[64], weight=2.0),
    ]


@pytest.fixture
def teachers(teacher_configs):
    return load_teachers(teacher_configs, "cpu")


def tiny_student() -> ReDimNetMRL:
    torch.manual_seed(1)
    return ReDimNetMRL(preset_config("tiny"), dims=STUDENT_DIMS)


def weights(embedding=1.0, similarity=1.0, aam=0.0) -> DistillLossesConfig:
    return DistillLossesConfig(embedding=embedding, similarity=similarity, aam=aam)


# ---------------------------------------------------------------------------- teachers


def test_teachers_load_by_path_frozen_in_eval_with_their_dims_and_weight(teachers):
    assert [(t.embed_dim, t.dims, t.weight, t.name) for t in teachers] == [
        (32, [16, 32], 1.0, "small"),
        (64, [64], 2.0, "large"),
    ]
    for teacher in teachers:
        assert not teacher.model.training
        assert not any(p.requires_grad for p in teacher.model.parameters())


def test_teachers_stay_in_eval_after_train_on_student_parent_or_themselves(teachers):
    class Trainer(nn.Module):
        def __init__(self):
            super().__init__()
            self.student = tiny_student()
            self.teachers = teachers  # a plain list: not registered

    trainer = Trainer().train()
    teachers[0].model.train()
    nn.Sequential(teachers[1].model).train()  # even if someone registers one by mistake
    assert trainer.student.training
    assert not any(m.training for t in teachers for m in t.model.modules())


def test_teachers_never_enter_the_student_state_dict_or_parameters(teachers):
    student = tiny_student()
    keys_before = set(student.state_dict())
    student.teachers = teachers
    assert set(student.state_dict()) == keys_before
    teacher_params = {id(p) for t in teachers for p in t.model.parameters()}
    assert not teacher_params & {id(p) for p in student.parameters()}


def test_teacher_embeddings_are_the_models_outputs_without_autograd(teachers):
    with torch.enable_grad():
        outputs = teacher_embeddings(teachers, WAVE)
    assert [tuple(o.shape) for o in outputs] == [(4, 32), (4, 64)]
    assert not any(o.requires_grad for o in outputs)
    with torch.no_grad():
        assert torch.equal(outputs[1], teachers[1].model(WAVE))


def test_teacher_embeddings_under_autocast_come_back_float32(teachers):
    outputs = teacher_embeddings(teachers[:1], WAVE, autocast_dtype=torch.bfloat16)
    assert outputs[0].dtype == torch.float32
    assert torch.allclose(outputs[0], teacher_embeddings(teachers[:1], WAVE)[0], rtol=0.1, atol=0.1)


# ---------------------------------------------------------------------------- loss terms


def test_similarity_loss_is_zero_when_student_equals_teacher():
    teacher = torch.randn(8, 32)
    assert similarity_distance(teacher.clone(), cosine_matrix(teacher)).item() == pytest.approx(0.0, abs=1e-10)


def test_similarity_loss_is_zero_for_a_rotated_rescaled_student_of_another_width():
    teacher = torch.randn(8, 32)
    lift = random_orthogonal(48, seed=2)[:32]  # [32, 48], orthonormal rows: keeps all inner products
    student = (teacher @ lift) * torch.rand(8, 1).add(0.5)  # per-sample scale: cosines unchanged
    assert similarity_distance(student, cosine_matrix(teacher)).item() == pytest.approx(0.0, abs=1e-10)


def test_similarity_loss_is_positive_when_the_geometry_differs():
    assert similarity_distance(torch.randn(8, 32), cosine_matrix(torch.randn(8, 32))).item() > 0.01


def test_adapter_learns_the_rotation_between_student_and_teacher():
    teacher = torch.randn(256, 32, generator=torch.Generator().manual_seed(3))
    student = teacher @ random_orthogonal(32, seed=4)
    adapters = DistillationAdapters([(32, [32])])
    optimizer = torch.optim.Adam(adapters.parameters(), lr=0.02)
    start = embedding_distance(adapters(0, student), teacher).item()
    for _ in range(200):
        loss = embedding_distance(adapters(0, student), teacher)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert start > 0.5
    assert loss.item() < 1e-3


def test_adapters_start_as_identity_so_a_matching_prefix_starts_at_zero_loss():
    teacher = torch.randn(8, 32)
    adapters = DistillationAdapters([(32, [16, 32, 64])])
    wider = torch.cat([teacher, torch.randn(8, 32)], dim=1)  # first 32 dims are the teacher's
    assert embedding_distance(adapters(0, teacher), teacher).item() == pytest.approx(0.0, abs=1e-6)
    assert embedding_distance(adapters(0, wider), teacher).item() == pytest.approx(0.0, abs=1e-6)
    assert torch.isfinite(embedding_distance(adapters(0, teacher[:, :16]), teacher))
    assert set(adapters.adapters) == {"t0_d16", "t0_d32", "t0_d64"}


# ---------------------------------------------------------------------------- combined loss


def test_total_weights_each_term_over_the_dims_each_teacher_supervises():
    loss_fn = DistillationLoss(
        STUDENT_DIMS, [(32, [16, 32], 1.0), (48, [64], 3.0)], weights(embedding=0.5, similarity=2.0)
    )
    student, small, large = torch.randn(6, 64), torch.randn(6, 32), torch.randn(6, 48)
    total, stats = loss_fn(student, [small, large])
    pairs = [(0, 16, small, 1.0), (0, 32, small, 1.0), (1, 64, large, 3.0)]
    expected = 0.0
    for index, dim, teacher, weight in pairs:
        embedding = embedding_distance(loss_fn.adapters(index, student[:, :dim]), teacher)
        similarity = similarity_distance(student[:, :dim], cosine_matrix(teacher))
        assert stats[f"embedding/t{index}_d{dim}"] == pytest.approx(embedding.item())
        assert stats[f"similarity/t{index}_d{dim}"] == pytest.approx(similarity.item())
        expected += weight * (0.5 * embedding + 2.0 * similarity)
    assert total.item() == pytest.approx((expected / 5.0).item(), rel=1e-6)
    per_pair = {f"{term}/t{i}_d{d}" for term in ("embedding", "similarity") for i, d, _, _ in pairs}
    assert set(stats) == per_pair | {"total"}
    assert all(v.dim() == 0 and not v.requires_grad for v in stats.values())


def test_a_term_with_weight_zero_is_neither_computed_nor_given_parameters():
    loss_fn = DistillationLoss(STUDENT_DIMS, [(32, [16], 1.0)], weights(embedding=0.0))
    _, stats = loss_fn(torch.randn(4, 64), [torch.randn(4, 32)])
    assert loss_fn.adapters is None and not list(loss_fn.parameters())
    assert set(stats) == {"similarity/t0_d16", "total"}


def test_a_teacher_dim_outside_the_student_dims_is_an_error_naming_it():
    with pytest.raises(ValueError, match=r"distill.teachers\[1\].dims: \[48\] not in the student's dims"):
        DistillationLoss(STUDENT_DIMS, [(32, [16], 1.0), (64, [48, 64], 1.0)], weights())


def test_aam_adds_the_matryoshka_loss_on_the_labelled_rows_only():
    aam_loss = MatryoshkaAAMLoss(STUDENT_DIMS, num_classes=3)
    loss_fn = DistillationLoss(STUDENT_DIMS, [(32, [16], 1.0)], weights(aam=0.5), aam_loss)
    student, teacher = torch.randn(6, 64), torch.randn(6, 32)
    labels = torch.tensor([0, 1, -1, 2, -1, 1])
    total, stats = loss_fn(student, [teacher], labels)
    labelled = labels >= 0
    aam, _ = aam_loss(student[labelled], labels[labelled])
    distill_only, _ = DistillationLoss(STUDENT_DIMS, [(32, [16], 1.0)], weights())(student, [teacher])
    assert stats["aam"] == pytest.approx(aam.item())
    assert total.item() == pytest.approx(distill_only.item() + 0.5 * aam.item(), rel=1e-6)
    assert {"aam/accuracy_d16", "aam/accuracy_d64"} <= set(stats)


@pytest.mark.parametrize("labels", [None, torch.full((4,), -1)])
def test_aam_zero_distils_unlabelled_batches(labels):
    aam_loss = MatryoshkaAAMLoss(STUDENT_DIMS, num_classes=3)
    loss_fn = DistillationLoss(STUDENT_DIMS, [(32, [16], 1.0)], weights(aam=0.0), aam_loss)
    total, stats = loss_fn(torch.randn(4, 64), [torch.randn(4, 32)], labels)
    assert torch.isfinite(total) and "aam" not in stats
    assert loss_fn.aam_loss is None  # its class weights would sit unused under DDP


@pytest.mark.parametrize("labels", [None, torch.full((4,), -1)])
def test_aam_on_an_unlabelled_batch_says_to_set_aam_to_zero(labels):
    loss_fn = DistillationLoss(
        STUDENT_DIMS, [(32, [16], 1.0)], weights(aam=0.5), MatryoshkaAAMLoss(STUDENT_DIMS, num_classes=3)
    )
    with pytest.raises(ValueError, match="set distill.losses.aam: 0"):
        loss_fn(torch.randn(4, 64), [torch.randn(4, 32)], labels)


def test_aam_weight_without_an_aam_loss_is_an_error():
    with pytest.raises(ValueError, match="no MatryoshkaAAMLoss"):
        DistillationLoss(STUDENT_DIMS, [(32, [16], 1.0)], weights(aam=0.5), None)


def test_a_distillation_step_trains_student_and_adapters_but_not_teachers(teachers):
    student = tiny_student().train()
    loss_fn = build_distillation_loss(student.dims, teachers, weights())
    total, _ = loss_fn(student(WAVE), teacher_embeddings(teachers, WAVE))
    total.backward()
    assert torch.isfinite(total)
    assert student.head.linear.weight.grad is not None
    assert all(adapter.weight.grad is not None for adapter in loss_fn.adapters.adapters.values())
    assert all(p.grad is None for t in teachers for p in t.model.parameters())


# ---------------------------------------------------------------------------- router baseline


@pytest.fixture(scope="module")
def router(teacher_configs):
    return EnsembleRouter.from_config(teacher_configs)


def test_router_routes_each_dim_to_its_teacher_and_truncates(router, teachers):
    assert router.dims == [16, 32, 64]
    with torch.no_grad():
        small, large = (t.model(WAVE) for t in teachers)  # the teachers' inference form: equal within 1e-5
        assert torch.allclose(router(WAVE, 16), small[:, :16], atol=1e-5)
        assert torch.allclose(router(WAVE, 32), small, atol=1e-5)
        assert torch.allclose(router(WAVE, 64), large, atol=1e-5)
        assert torch.allclose(router(WAVE), large, atol=1e-5)


def test_router_forward_all_runs_each_teacher_once(router):
    calls = []
    hooks = [t.register_forward_hook(lambda *_: calls.append(1)) for t in router.teachers]
    with torch.no_grad():
        outputs = router.forward_all(WAVE)
        single = router(WAVE, 16)
    for hook in hooks:
        hook.remove()
    assert len(calls) == 3  # two for forward_all, one for the single dim
    assert {d: tuple(e.shape) for d, e in outputs.items()} == {16: (4, 16), 32: (4, 32), 64: (4, 64)}
    assert torch.equal(outputs[16], single)


def test_router_names_a_dim_no_teacher_covers(router):
    with pytest.raises(ValueError, match=r"no teacher covers dim 48; routed dims: \[16, 32, 64\]"):
        router(WAVE, 48)


def test_router_refuses_a_dim_longer_than_its_teachers_embedding():
    with pytest.raises(ValueError, match="dim 40 exceeds its embed_dim 32"):
        EnsembleRouter([(build_preset("tiny", embed_dim=32), [16, 40])])


# ---------------------------------------------------------------------------- embedding cache


def test_cache_round_trips_through_flush_and_reload(tmp_path):
    cache = TeacherEmbeddingCache(tmp_path, "small", 32)
    embeddings = torch.randn(3, 32)
    cache.put(["a", "b", "c"], [0, 0, 16000], [32000, 32000, 32000], embeddings)
    assert cache.flush() == tmp_path / "small.rank0.pt"
    reloaded = TeacherEmbeddingCache(tmp_path, "small", 32)
    assert torch.equal(reloaded.get(["c", "a"], torch.tensor([16000, 0]), [32000, 32000]), embeddings[[2, 0]])


def test_cache_get_is_none_when_any_crop_is_missing(tmp_path):
    cache = TeacherEmbeddingCache(tmp_path, "small", 32)
    cache.put(["a"], [0], [32000], torch.randn(1, 32))
    assert cache.get(["a", "b"], [0, 0], [32000, 32000]) is None
    assert cache.get(["a"], [8000], [32000]) is None  # another crop of the same utterance


def test_cache_reads_every_ranks_part(tmp_path):
    for rank in range(2):
        part = TeacherEmbeddingCache(tmp_path, "small", 32, part=f"rank{rank}")
        part.put([f"utt{rank}"], [0], [32000], torch.full((1, 32), float(rank)))
        part.flush()
    merged = TeacherEmbeddingCache(tmp_path, "small", 32, part="rank0")
    assert merged.get(["utt0", "utt1"], [0, 0], [32000, 32000])[:, 0].tolist() == [0.0, 1.0]


def test_cache_for_another_embedding_size_is_an_error_naming_the_file(tmp_path):
    cache = TeacherEmbeddingCache(tmp_path, "small", 32)
    cache.put(["a"], [0], [32000], torch.randn(1, 32))
    cache.flush()
    with pytest.raises(CheckpointError, match="small.rank0.pt.*delete"):
        TeacherEmbeddingCache(tmp_path, "small", 64)


def test_a_cache_file_written_before_the_shared_frozen_outputs_form_still_loads(tmp_path):
    embeddings = torch.randn(2, 32)
    torch.save(  # the columns as TeacherEmbeddingCache has always written them
        {
            "format": "mrl-dist-teacher-cache/1",
            "teacher": "small",
            "embed_dim": 32,
            "keys": ["a", "b"],
            "starts": torch.tensor([0, 8000]),
            "lengths": torch.tensor([16000, 16000]),
            "embeddings": embeddings,
        },
        tmp_path / "small.rank1.pt",
    )
    cache = TeacherEmbeddingCache(tmp_path, "small", 32)
    assert torch.equal(cache.get(["b", "a"], [8000, 0], [16000, 16000]), embeddings[[1, 0]])


def test_a_cache_file_of_another_format_is_an_error_naming_it(tmp_path):
    torch.save({"format": "mrl-dist-teacher-cache/0", "keys": []}, tmp_path / "small.rank0.pt")
    with pytest.raises(CheckpointError, match=r"small.rank0.pt: not a mrl-dist-teacher-cache/1 file.*delete it"):
        TeacherEmbeddingCache(tmp_path, "small", 32)


def test_cached_teacher_embeddings_run_a_teacher_only_on_a_miss(teachers, tmp_path):
    caches = open_teacher_caches(teachers, tmp_path)
    calls = []
    hook = teachers[0].model.register_forward_hook(lambda *_: calls.append(1))
    keys, starts, lengths = ["a", "b", "c", "d"], [0] * 4, [8000] * 4
    first = cached_teacher_embeddings(teachers, caches, WAVE, keys, starts, lengths)
    second = cached_teacher_embeddings(teachers, caches, WAVE, keys, starts, lengths)
    hook.remove()
    assert len(calls) == 1
    assert all(torch.equal(a, b) for a, b in zip(first, second))
