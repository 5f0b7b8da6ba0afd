// A request's prompt as token ids, built as a native node builds it (docs/protocol.md, "The
// request"; the reference is dinet.engine.llama's chat_prompt and raw_prompt): messages go
// through the GGUF's own Jinja chat template with the generation prompt added, the end of
// the template's turn (the EOS token's text) joins the stop strings, and no BOS is added;
// a raw prompt gets the BOS token first when the GGUF asks for one.
import { Template } from "@huggingface/jinja";

import { Refusal } from "./spec/index.js";

export class PromptBuilder {
  #wllama;
  #template;
  #bosText;
  #eosText;

  /** `wllama` is a loaded Wllama; the token texts come from the model's vocabulary. */
  static async of(wllama) {
    const text = async (token) =>
      token < 0 ? "" : new TextDecoder().decode(await wllama.detokenize([token]));
    const source = wllama.getChatTemplate();
    return new PromptBuilder(wllama, source ? new Template(source) : null, await text(wllama.getBOS()), await text(wllama.getEOS()));
  }

  constructor(wllama, template, bosText, eosText) {
    this.#wllama = wllama;
    this.#template = template;
    this.#bosText = bosText;
    this.#eosText = eosText;
  }

  /** {tokens, stops} for a request's decoded `params`; a Refusal when it cannot be built. */
  async tokens(params) {
    if (params.messages !== null) {
      if (this.#template === null) throw new Refusal("bad_request", "this model has no chat template: send a raw prompt");
      let text;
      try {
        text = this.#template.render({
          messages: params.messages.map(({ role, content }) => ({ role, content })),
          add_generation_prompt: true,
          bos_token: this.#bosText,
          eos_token: this.#eosText,
        });
      } catch (error) {
        throw new Refusal("bad_request", `the chat template refused the messages: ${error.message}`);
      }
      return { tokens: await this.#wllama.tokenize(text, true), stops: this.#eosText ? [this.#eosText] : [] };
    }
    const body = params.prompt ? await this.#wllama.tokenize(params.prompt, true) : [];
    const bos = this.#wllama.mustAddBosToken() ? [this.#wllama.getBOS()] : [];
    const eos = this.#wllama.mustAddEosToken() ? [this.#wllama.getEOS()] : [];
    return { tokens: [...bos, ...body, ...eos], stops: [] };
  }
}
