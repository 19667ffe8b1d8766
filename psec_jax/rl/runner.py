"""The one PSEC experiment runner: validate -> load -> normalise -> pretrain pi_0 -> expand skills ->
save libraries -> scratch baselines -> compose -> evaluate (each method in its own rollout, from the same
start states) -> report.

A setting (``continual``, ``safe``, ``dynamics``) is a ``Setting``: its method table, its acting rule,
its own config checks and a ``prepare`` that loads its data and environment and says which skills to
learn on which data and how to report. Every method of a table is trained and evaluated the same way.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import ml_collections

from psec_jax import artifacts, parallel, progress, runs
from psec_jax.data.offline import OfflineData
from psec_jax.envs.base import Env
from psec_jax.rl import acting, compose, critics, evaluate, pi0, pipeline, policy, report, saving, train
from psec_jax.rl.methods import Method, check_methods, check_table


@dataclasses.dataclass(frozen=True)
class Skill:
    name: str  # its name in the skill library
    data: str  # key of its training data in ``Prepared.data``
    critic: str  # "reward" or "cost": its critic is ``config.critics[critic]``


@dataclasses.dataclass(frozen=True)
class Report:
    title: str  # of the table and plot
    fields: tuple[str, ...] = ("return",)  # columns: "return" and / or "cost"
    labels: Mapping[str, str] | None = None  # display names of the fields
    normalizers: Mapping[str, float] | None = None  # per field: reported = (raw - offset) / normalizer
    offsets: Mapping[str, float] | None = None
    note: str = ""  # printed and written under the table
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # also in results.json and the output


@dataclasses.dataclass(frozen=True)
class Prepared:
    """What a setting's ``prepare`` hands the runner."""

    data: Mapping[str, OfflineData]  # raw datasets by key
    env: Env  # the evaluation environment
    pretrain: str  # key of pi_0's data (it fixes the observation normaliser); may be absent with config.pretrained
    pretrain_name: str  # that dataset's name, recorded with the saved pi_0
    skills: tuple[Skill, ...]  # in library / composition order
    target: str  # the skill whose data and critic the scratch baseline shares
    compose: str  # key of the composers' data
    critics: Mapping[str, str]  # acting role ("reward" / "cost") -> the skill whose critic scores it
    report: Report


@dataclasses.dataclass(frozen=True)
class Setting:
    name: str
    methods: Mapping[str, Method]  # the method table
    rule: str  # acting rule (``acting.RULES``)
    check: Callable[[ml_collections.ConfigDict], None]  # the setting's own config checks (ValueError)
    prepare: Callable[..., Prepared]  # (config, **run kwargs) -> Prepared
    expand_key: str = "expand/{kind}/{name}"  # PRNG stream of each skill's stage (fixed: results reproduce)
    # config -> (pi_0's data name, evaluation env name) that ``prepare`` uses without overrides; a given
    # pi_0 (config.pretrained) is checked against them before anything is loaded
    pi0_source: Callable[[ml_collections.ConfigDict], tuple[str, str]] | None = None
    roles: tuple[str, ...] = ("reward",)  # the critics its ``prepare`` provides for acting (``Prepared.critics``)

    RESUME_MAY_CHANGE: ClassVar[tuple[str, ...]] = ("mesh.data",)  # the seeds' devices: results are the same

    def check_devices(self, config: ml_collections.ConfigDict) -> None:
        """ValueError unless the started backend has the ``config.mesh.data`` devices the seeds split over."""
        parallel.members_mesh(config.mesh.data, config.num_seeds)

    def check_config(self, config: ml_collections.ConfigDict, given: Collection[str] = ()) -> None:
        """``check_config(self, ...)``: what the CLI runs before anything is loaded or compiled."""
        check_config(self, config, given)

    def run(self, config: ml_collections.ConfigDict, workdir: str | os.PathLike, **kwargs: Any) -> dict[str, Any]:
        """``run(self, ...)``: the experiment's entry point (``psec-jax <setting>``)."""
        return run(self, config, workdir, **kwargs)


def check_config(setting: Setting, config: ml_collections.ConfigDict, given: Collection[str] = ()) -> None:
    """ValueError (one line) for a config ``setting`` cannot run; nothing is generated or compiled (a given
    pi_0 is read). ``given``: the ``prepare`` overrides of a run (``"data"``, ``"env"``), which replace the
    data name and environment a given pi_0 is checked against."""
    check_table(dict(setting.methods))
    check_methods(tuple(config.methods), dict(setting.methods))
    rule = rule_of(setting, config)
    acting.check_rule(rule)
    if missing := [r for r in acting.NEEDS[rule] if r not in setting.roles]:
        raise ValueError(f"config.eval.rule={rule!r} needs a {missing[0]} critic; the {setting.name} setting has none")
    pipeline.check_common(config, ("pretrain", "expand", "compose"), ("critics.reward", "critics.cost"))
    if any(setting.methods[m].composer == "routed" for m in config.methods):
        try:
            compose.routing_config(config)
        except (ValueError, TypeError) as e:
            raise ValueError(f"config.compose.routing: {e}") from None
    for kind in critics.KINDS:
        if config.critics[kind].kind != kind:
            raise ValueError(f"config.critics.{kind}.kind must be {kind!r}, got {config.critics[kind].kind!r}")
    setting.check(config)
    if config.library:
        if not config.pretrained:
            raise ValueError("config.library needs config.pretrained: the pi_0s its skills were trained on")
        if config.eval.candidates != 1 or any(setting.methods[m].candidates > 1 for m in config.methods):
            raise ValueError(
                f"config.library: loaded skills come without their critics, so acting cannot rank "
                f"{config.eval.candidates} candidates; set config.eval.candidates=1"
            )
        missing = [p.name for p in saving.library_paths(config.library, config.num_seeds) if not p.is_dir()]
        if missing:
            raise ValueError(
                f"config.library {config.library}: {', '.join(missing[:3])} is missing (each of the "
                f"{config.num_seeds} seeds loads its own library)"
            )
    data_name, env_name = setting.pi0_source(config) if setting.pi0_source else (None, None)
    pi0.check_pretrained(
        config,
        None if "data" in given else data_name,
        None if "env" in given or env_name is None else pi0.recorded_sizes(env_name),
    )


def rule_of(setting: Setting, config: ml_collections.ConfigDict) -> str:
    """The acting rule of a run: ``config.eval.rule``, or the setting's own where that is empty."""
    return config.eval.get("rule") or setting.rule


def run(
    setting: Setting, config: ml_collections.ConfigDict, workdir: str | os.PathLike, **kwargs: Any
) -> dict[str, Any]:
    """Runs every stage the config's methods need for ``config.num_seeds`` seeds, evaluates every method
    and writes results.{json,md,png}, pi_0, per-seed skill libraries and composers to ``workdir``.
    ``kwargs`` go to ``setting.prepare`` (data / env / reference overrides). Returns ``{"methods":
    summary, "raw": unnormalised summary, "improvement": P(psec > each other method), "seconds",
    **report.extra}``."""
    check_config(setting, config, given=[k for k, v in kwargs.items() if v is not None])
    workdir, t_start, commit = Path(workdir), time.perf_counter(), runs.git_commit()  # the code that runs
    prep = setting.prepare(config, **kwargs)
    methods = {m: setting.methods[m] for m in config.methods}
    if unknown := sorted({m.data for m in methods.values() if m.data and m.data not in prep.data}):
        raise ValueError(f"the {setting.name} setting's methods train on data it does not prepare: {unknown}")
    if any(m.composer == "routed" and m.policy == "composed" for m in methods.values()):
        try:
            compose.routing_config(config, len(prep.skills))  # before anything trains
        except ValueError as e:
            raise ValueError(f"config.compose.routing: {e}") from None
    obs_dim, act_dim, n = prep.env.observation_size, prep.env.action_size, config.num_seeds
    if config.pretrained:  # pi_0 is given, with the normaliser it was trained with
        pretrained, normalizer = pi0.load_pretrained(config, prep.pretrain_name, obs_dim, act_dim)
    else:
        normalizer = pi0.observation_normalizer(config, prep.data[prep.pretrain].observations, obs_dim)
    data = {
        k: v.replace(observations=normalizer(v.observations), next_observations=normalizer(v.next_observations))
        for k, v in prep.data.items()
    }
    actors = {k: policy.make_actor(config.network, obs_dim, act_dim, k) for k in policy.SKILL_KINDS}
    skill_of = {s.name: s for s in prep.skills}
    critic_fns = {s.name: critics.make_critic(obs_dim, act_dim, config.critics[s.critic]) for s in prep.skills}

    role_fns = {r: critic_fns[s] for r, s in prep.critics.items()}

    def stage(trainer, key_name, inputs, d, name, seeds=n, members="vmap"):
        keys = pipeline.seed_keys(config.seed, seeds, key_name)
        return pipeline.run_stage(
            trainer,
            keys,
            inputs,
            d,
            workdir=workdir / "stages" / name,
            config=config,
            desc=name,
            devices=config.mesh.data,
            members=members,
        )[0]

    # which skill kinds the methods compose or apply; acting by a skill's critic also needs the skill
    kinds = sorted({m.skill_kind for m in methods.values() if m.policy in ("skills", "composed")})
    if not kinds and any(m.policy == "prior" for m in methods.values()):
        kinds = ["lora"]
    base = None
    if config.pretrained and any(m.policy != "scratch" for m in methods.values()):
        base = pipeline.repeat_seeds(pretrained, n) if config.share_pretrain else pretrained
    elif any(m.policy != "scratch" for m in methods.values()):
        pre = stage(
            train.make_pretrain(actors["lora"], config.pretrain),
            "pretrain",
            train.PretrainInputs(),
            data[prep.pretrain],
            "pretrain",
            seeds=1 if config.share_pretrain else n,
        )
        base = pipeline.repeat_seeds(pre.ema, n) if config.share_pretrain else pre.ema
        # library_seed{i} is built on seed i's pi_0, so each seed's own is saved where they differ
        for i in range(1 if config.share_pretrain else n):
            saving.save_base(
                workdir / "policies" / ("pi0" if i == 0 else f"pi0_seed{i}"),
                saving.take_seed(base, i),
                config.network,
                obs_dim,
                act_dim,
                normalizer,
                data=prep.pretrain_name,
            )

    # each skill's critic trains alongside its first kind; later kinds and scratch reuse it, frozen. LoRA
    # skills of a given library are loaded instead (without critics: scratch then trains its own)
    skills: dict[str, policy.Skills] = {}
    critic_of: dict[str, critics.CriticState] = {}
    train_configs = {s.name: {"expand": config.expand, "critic": config.critics[s.critic]} for s in prep.skills}
    loaded, loaded_configs = (
        saving.load_library_skills(
            config.library, base, [s.name for s in prep.skills], actors["lora"].lora_config, train_configs
        )
        if config.library and "lora" in kinds
        else ({}, {})
    )
    for kind in kinds:
        parts = []
        for s in prep.skills:
            if kind == "lora" and s.name in loaded:
                parts.append(loaded[s.name])
                continue
            trainer = train.make_expand(actors[kind], config.expand, config.critics[s.critic], kind)
            st = stage(
                trainer,
                setting.expand_key.format(kind=kind, name=s.name),
                train.ExpandInputs(base, critic_of.get(s.name)),
                data[s.data],
                f"expand_{kind}_{s.name}",
            )
            parts.append(jax.vmap(actors[kind].as_skills)(st.ema))
            critic_of.setdefault(s.name, st.critic)
        skills[kind] = jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=1), *parts)  # [S, K, ...]
    names = [s.name for s in prep.skills]
    if "lora" in skills:
        for i in range(n):
            saving.library_of(
                saving.take_seed(base, i),
                saving.take_seed(skills["lora"], i),
                names,
                actors["lora"].lora_config,
                {**train_configs, **loaded_configs},
            ).save(workdir / "policies" / f"library_seed{i}")

    acts, params, routes, rule = {}, {}, {}, rule_of(setting, config)
    target = skill_of[prep.target]
    for name, m in methods.items():
        sampler_args, role_critics = {}, {r: critic_of.get(s) for r, s in prep.critics.items()}
        if m.policy == "scratch":
            # the target skill's critic where it was fitted on this method's data, or where a BC loss ignores its
            # weights; else the stage trains its own
            own_data = m.data in ("", target.data)
            shared = critic_of.get(target.name) if own_data or m.objective == "bc" else None
            budget = config[m.budget or "expand"]
            expand = ml_collections.ConfigDict(
                {**budget.to_dict(), "objective": m.objective or config.expand.objective}
            )
            trainer = train.make_expand(actors["lora"], expand, config.critics[target.critic], "full")
            st = stage(trainer, name, train.ExpandInputs(None, shared), data[m.data or target.data], name)
            pol, role_critics["reward"] = {"base": st.ema, "skills": None}, st.critic
        elif m.policy == "prior":
            pol = {"base": base, "skills": None}
        elif m.policy == "skills":
            idx = jnp.asarray([names.index(s) for s in m.skills])
            pol = {"base": base, "skills": jax.tree.map(lambda x: x[:, idx], skills[m.skill_kind])}
        else:
            pol, sampler_args = compose.compose_method(
                name,
                m,
                config,
                actors[m.skill_kind],
                base,
                skills[m.skill_kind],
                data[prep.compose],
                names,
                stage,
                workdir,
            )
        if m.policy == "composed" and m.composer == "routed":
            routes[name] = compose.route_counts(
                sampler_args["composer"], pol["composer"], data[prep.compose].observations
            )
        sampler = policy.make_sampler(actors[m.skill_kind], **sampler_args)
        acts[name] = acting.make_act(sampler, role_fns, rule, m.candidates or config.eval.candidates, normalizer)
        params[name] = {"policy": pol, "critics": {r: role_critics[r] for r in acting.NEEDS[rule]}}

    t_eval = time.perf_counter()
    # a routed composer's dropless dispatch branches on its route: its seeds act in turn (vmap would run every branch)
    in_turn = [name for name, m in methods.items() if m.composer == "routed" and m.policy == "composed"]
    evaluate_fn = evaluate.make_evaluate(prep.env, acts, n, config.eval.episodes, in_turn=in_turn)
    with progress.phase(
        f"{setting.name}: evaluating {len(methods)} methods, {n} seeds x {config.eval.episodes} episodes",
        disable=jax.process_index() != 0,
    ):
        results = jax.device_get(evaluate_fn(params, jax.random.key(config.seed + 10_000)))
    results = {m: results[m] for m in methods}
    rep = prep.report
    reps = config.eval.bootstrap_reps
    summary = report.summarize(results, normalizers=rep.normalizers, offsets=rep.offsets, reps=reps)
    raw = report.summarize(results, reps=0)
    improvement = report.improvements(summary, [("psec", m) for m in methods if m != "psec"], reps=reps)
    seconds = {"total": time.perf_counter() - t_start, "evaluate": time.perf_counter() - t_eval}
    extra = {
        "raw": raw,
        "seconds": seconds,
        "config": runs.to_jsonable(config),
        "commit": commit,
        "acting_rule": rule,
        **({"routed_skills_per_state": routes} if routes else {}),
        "data_sha256": {k: v.checksum() for k, v in prep.data.items()},
        **rep.extra,
    }
    if config.pretrained:
        extra["pretrained_sha256"] = artifacts.sha256(pi0.pretrained_paths(config)[0] / "manifest.json")
        if not config.share_pretrain:  # each seed's own pi_0
            extra["pretrained_seeds_sha256"] = [
                artifacts.sha256(p / "manifest.json") for p in pi0.pretrained_paths(config)
            ]
    table = report.write(
        workdir,
        summary,
        title=rep.title,
        fields=rep.fields,
        extra=extra,
        labels=rep.labels,
        note=rep.note,
        improvement=improvement,
    )
    print(table + rep.note)
    print(f"took {seconds['total']:.0f} s (evaluation {seconds['evaluate']:.0f} s); results in {workdir}")
    return {"methods": summary, "raw": raw, "improvement": improvement, "seconds": seconds, **rep.extra}
