// Validates LM Studio preset files (<name>.preset.json) with LM Studio's own zod schemas from npm
// (@lmstudio/lms-shared-types for the KV config shape, @lmstudio/lms-kv-config for each field's value type).
// A file holding "model" and "base" is an LM Studio model definition (model.yaml, read into JSON by the test): it is
// checked with virtualModelDefinitionSchema (@lmstudio/lms-shared-types) and its config fields as a preset's.
// Usage: node validate.js FILE...   -> exit 0 when all are valid, else 1 with one line per problem.
"use strict";
const fs = require("fs");
const { kvConfigSchema, virtualModelDefinitionSchema } = require("@lmstudio/lms-shared-types");
const { globalConfigSchematics, llmLlamaPredictionConfigSchematics, llmLlamaLoadConfigSchematics } =
  require("@lmstudio/lms-kv-config");

function checkModelDefinition(def) {
  const problems = [];
  const parsed = virtualModelDefinitionSchema.safeParse(def);
  if (!parsed.success) problems.push(`model definition: ${parsed.error.message.replace(/\s+/g, " ")}`);
  if (typeof def.model !== "string" || def.model.split("/").length !== 2) problems.push("model: expected publisher/name");
  const config = def.config || {};
  return problems.concat(checkFields({ operation: config.operation || { fields: [] }, load: config.load || { fields: [] } }));
}

function check(file) {
  const data = JSON.parse(fs.readFileSync(file, "utf8"));
  if (data && data.model !== undefined && data.base !== undefined) return checkModelDefinition(data);
  const problems = [];
  const preset = data;
  for (const key of ["identifier", "name"]) {
    if (typeof preset[key] !== "string" || preset[key] === "") problems.push(`${key}: expected a non-empty string`);
  }
  if (typeof preset.identifier === "string" && !preset.identifier.startsWith("@local:")) {
    problems.push("identifier: expected @local:<name>");
  }
  return problems.concat(checkFields(preset));
}

function checkFields(preset) {
  const problems = [];
  const scopes = { operation: llmLlamaPredictionConfigSchematics, load: llmLlamaLoadConfigSchematics };
  for (const [section, scoped] of Object.entries(scopes)) {
    const parsed = kvConfigSchema.safeParse(preset[section]);
    if (!parsed.success) {
      problems.push(`${section}: ${parsed.error.message}`);
      continue;
    }
    // the lenient schema is what LM Studio applies to stored configs: fields with unknown keys or bad values are dropped
    const kept = globalConfigSchematics.getLenientZodSchema().parse(parsed.data).fields.map(f => f.key);
    for (const field of parsed.data.fields) {
      if (!kept.includes(field.key)) {
        let why = "unknown key";
        try {
          const def = globalConfigSchematics.obtainFieldByFullKey(field.key);
          const r = def.schema.safeParse(field.value);
          why = r.success ? "duplicate" : r.error.message.replace(/\s+/g, " ");
        } catch (e) { /* unknown key */ }
        problems.push(`${section}.${field.key}: ${why}`);
      } else if (!scoped.hasFullKey(field.key)) {
        problems.push(`${section}.${field.key}: not a ${section === "load" ? "load" : "prediction"} setting of the llama.cpp engine`);
      }
    }
  }
  return problems;
}

let ok = true;
for (const file of process.argv.slice(2)) {
  for (const p of check(file)) {
    ok = false;
    console.log(`${file}: ${p}`);
  }
}
process.exit(ok ? 0 : 1);
