import type { Span } from '@opentelemetry/api';
import type { GenAiConfig } from '../config/policy';
import { numberAt, UsageReader } from '../limits/usage';
import { readTarget, type RequestParts } from '../policy/contract';
import { setGenAiRequest } from './trace';

/** Model ids as the presets allow them: anything else is not put on a span (it would be a client's free text). */
const MODEL_ID = /^[A-Za-z0-9._:/@-]{1,128}$/;

/** A route's GenAI declaration, ready for calls: the token readers built once. */
export interface GenAiRoute {
  readonly provider: string;
  readonly operation: string;
  readonly model: GenAiConfig['model'];
  readonly inputTokens: ((value: unknown) => number | null) | null;
  readonly outputTokens: ((value: unknown) => number | null) | null;
}

export interface GenAiUsage {
  inputTokens: number | null;
  outputTokens: number | null;
}

export function compileGenAi(config: GenAiConfig): GenAiRoute {
  return {
    provider: config.provider,
    operation: config.operation,
    model: config.model,
    inputTokens: config.inputTokens ? numberAt(config.inputTokens) : null,
    outputTokens: config.outputTokens ? numberAt(config.outputTokens) : null,
  };
}

/** The model this call asked for (from the checked body, a path parameter, or the route), or null. */
export function requestModel(genAi: GenAiRoute, params: Readonly<Record<string, string>>, parts: RequestParts): string | null {
  const { model } = genAi;
  const value = 'value' in model ? model.value : 'param' in model ? params[model.param] : readTarget(parts, model.field);
  return typeof value === 'string' && MODEL_ID.test(value) ? value : null;
}

/** Puts the GenAI request attributes on a recorded span, once the body was checked (step 10). */
export function traceGenAiRequest(span: Span, genAi: GenAiRoute, params: Readonly<Record<string, string>>, parts: RequestParts): void {
  if (span.isRecording()) setGenAiRequest(span, genAi, requestModel(genAi, params, parts));
}

/**
 * Reads the tokens a response reports, from the JSON body or the last SSE event that carries them (as budgets
 * read usage, lib/core/limits/usage.ts). Only made for a call whose span is recorded: parsing the body costs.
 */
export function genAiUsageReader(genAi: GenAiRoute, contentType: string): { reader: UsageReader; usage: GenAiUsage } | null {
  const { inputTokens, outputTokens } = genAi;
  if (!inputTokens && !outputTokens) return null;
  const usage: GenAiUsage = { inputTokens: null, outputTokens: null };
  const reader = new UsageReader((value) => {
    const input = inputTokens?.(value) ?? null;
    const output = outputTokens?.(value) ?? null;
    if (input === null && output === null) return null;
    usage.inputTokens = input;
    usage.outputTokens = output;
    return (input ?? 0) + (output ?? 0);
  }, contentType);
  return { reader, usage };
}
