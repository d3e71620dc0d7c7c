"""LM Studio presets: the current ``<name>.preset.json`` (KV config fields) and the legacy config format."""

from __future__ import annotations

from typing import Any

from ..errors import ForgeError


def _checkbox(value: float) -> dict[str, Any]:
    return {"checked": True, "value": value}


def preset(*, name: str, identifier: str, system: str | None, jinja: str, manual: dict[str, str] | None,
           stops: list[str], sampling: dict[str, float | int], ctx: int) -> dict[str, Any]:
    """A current-format LM Studio preset (``~/.lmstudio/config-presets/<name>.preset.json``)."""
    template: dict[str, Any] = {"type": "jinja", "jinjaPromptTemplate": {"template": jinja}, "stopStrings": stops}
    if manual is not None:
        template["manualPromptTemplate"] = manual
    fields: list[dict[str, Any]] = [
        {"key": "llm.prediction.systemPrompt", "value": system or ""},
        {"key": "llm.prediction.promptTemplate", "value": template},
        {"key": "llm.prediction.stopStrings", "value": stops},
    ]
    if "temperature" in sampling:
        fields.append({"key": "llm.prediction.temperature", "value": float(sampling["temperature"])})
    if "top_k" in sampling:
        fields.append({"key": "llm.prediction.topKSampling", "value": int(sampling["top_k"])})
    for ours, theirs in (("top_p", "topPSampling"), ("min_p", "minPSampling"), ("repeat_penalty", "repeatPenalty")):
        if ours in sampling:
            fields.append({"key": f"llm.prediction.{theirs}", "value": _checkbox(float(sampling[ours]))})
    return {"identifier": identifier, "name": name, "changed": True, "operation": {"fields": fields},
            "load": {"fields": [{"key": "llm.load.contextLength", "value": int(ctx)}]}}


def legacy_preset(*, name: str, system: str | None, manual: dict[str, str] | None, stops: list[str],
                  sampling: dict[str, float | int], ctx: int) -> dict[str, Any]:
    """The legacy LM Studio config (``inference_params`` with input/pre-prompt prefixes); needs a manual form."""
    if manual is None:
        raise ForgeError("--lmstudio-legacy: the legacy format has only per-role prefixes and suffixes, which cannot "
                         "express this chat template (system folded into a user turn, BOS per turn or a generation "
                         "prompt unlike the reply header); leave out --lmstudio-legacy")
    params: dict[str, Any] = {
        "input_prefix": manual["beforeUser"],
        "input_suffix": manual["afterUser"] + manual["beforeAssistant"],
        "antiprompt": stops,
        "pre_prompt": system or "",
        "pre_prompt_prefix": manual["beforeSystem"],
        "pre_prompt_suffix": manual["afterSystem"],
    }
    for ours, theirs in (("temperature", "temp"), ("top_k", "top_k"), ("top_p", "top_p"),
                         ("repeat_penalty", "repeat_penalty")):
        if ours in sampling:
            params[theirs] = sampling[ours]
    return {"name": name, "load_params": {"n_ctx": int(ctx)}, "inference_params": params}


def model_yaml(*, model: str, key: str, preset_data: dict[str, Any], ctx: int, tools: bool, thinking: bool,
               thinking_default: bool = True) -> dict[str, Any]:
    """LM Studio's model definition (``model.yaml``, the ``VirtualModelDefinition`` of @lmstudio/lms-shared-types):
    ``model`` ("publisher/name") built on the concrete GGUF model ``key`` ("user/repo", where ``lms import
    --user-repo`` puts it), with the preset's prediction and load settings, the context length, whether the
    template carries tools and thinking, and a "Thinking" switch (the ``enable_thinking`` Jinja variable) when
    the template has one."""
    user, _, repo = key.partition("/")
    data: dict[str, Any] = {
        "model": model,
        "base": [{"key": key, "sources": [{"type": "huggingface", "user": user, "repo": repo}]}],
        "metadataOverrides": {"domain": "llm", "compatibilityTypes": ["gguf"], "contextLengths": [int(ctx)],
                              "trainedForToolUse": bool(tools), "reasoning": bool(thinking)},
        "config": {"operation": preset_data["operation"], "load": preset_data["load"]},
    }
    if thinking:
        data["customFields"] = [{
            "key": "enableThinking", "displayName": "Enable Thinking", "type": "boolean",
            "description": "Let the model reason before it answers (the chat template's enable_thinking)",
            "defaultValue": thinking_default, "effects": [{"type": "setJinjaVariable", "variable": "enable_thinking"}],
        }]
    return data
