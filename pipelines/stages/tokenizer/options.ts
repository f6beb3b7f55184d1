/**
 * The writeTokenizer options: the schema a config entry is checked against, and the same options
 * as the documented type library users write.
 * @module
 */
import { z } from "zod";
import type { Same } from "../_options.ts";

/** The writeTokenizer options schema (unknown keys rejected). */
export const writeTokenizerOptions = z.strictObject({
  /** Tokenizer folder; default: the adapter folder, then the model folder. */
  from: z.string().min(1).optional(),
  /** Set this pad token (its content, e.g. `"<|endoftext|>"`). */
  padToken: z.string().min(1).optional(),
  /** Use the eos token as pad token when the tokenizer has none (HALOs' rule). Default false. */
  padWithEos: z.boolean().default(false),
  /** Chat template text to set when none exists. */
  chatTemplate: z.string().min(1).optional(),
  /** File holding the chat template to set (relative to the config). */
  chatTemplateFile: z.string().min(1).optional(),
  /** Replace an existing chat template too. Default false. */
  replaceChatTemplate: z.boolean().default(false),
  /** Special tokens to add (content strings), with the next free ids. */
  addSpecialTokens: z.array(z.string().min(1)).default([]),
  /** Further file names to copy when present. */
  extraFiles: z.array(z.string().min(1)).default([]),
  /** Load the tokenizer and render the template before writing. Default true. */
  validate: z.boolean().default(true),
});

/** Options of the writeTokenizer stage, as a config writes them (the schema's input type). */
export interface WriteTokenizerOptions {
  /** Tokenizer folder; default: the adapter folder, then the model folder. */
  from?: string | undefined;
  /** Set this pad token (its content, e.g. `"<|endoftext|>"`). */
  padToken?: string | undefined;
  /** Use the eos token as pad token when the tokenizer has none (HALOs' rule). Default false. */
  padWithEos?: boolean | undefined;
  /** Chat template text to set when none exists. */
  chatTemplate?: string | undefined;
  /** File holding the chat template to set (relative to the config). */
  chatTemplateFile?: string | undefined;
  /** Replace an existing chat template too. Default false. */
  replaceChatTemplate?: boolean | undefined;
  /** Special tokens to add (content strings), with the next free ids. */
  addSpecialTokens?: string[] | undefined;
  /** Further file names to copy when present. */
  extraFiles?: string[] | undefined;
  /** Load the tokenizer and render the template before writing. Default true. */
  validate?: boolean | undefined;
}

const _sameOptions: Same<z.input<typeof writeTokenizerOptions>, WriteTokenizerOptions> = true;
