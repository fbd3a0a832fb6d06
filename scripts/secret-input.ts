/**
 * A secret typed at a terminal (`npm run keyward -- hash-password`, `keys add`): not shown as it is typed, ended
 * by Enter (Backspace erases, Ctrl-C aborts, Ctrl-D ends). A few lines of our own: readline always echoes what is
 * typed, and no well-kept package is worth a dependency of the CLI for it.
 */

/** What is needed of a terminal's input (process.stdin when it is a TTY). */
export interface TerminalInput {
  setRawMode(raw: boolean): unknown;
  resume(): unknown;
  pause(): unknown;
  setEncoding(encoding: BufferEncoding): unknown;
  on(event: 'data', listener: (text: string) => void): unknown;
  off(event: 'data', listener: (text: string) => void): unknown;
}

/** One entry, typed after `prompt` (written to `output`); null when aborted with Ctrl-C. */
export function readHidden(input: TerminalInput, output: NodeJS.WritableStream, prompt: string): Promise<string | null> {
  output.write(prompt);
  input.setRawMode(true);
  input.setEncoding('utf8');
  input.resume();
  return new Promise((resolve) => {
    let typed = '';
    const done = (value: string | null) => {
      input.off('data', onData);
      input.setRawMode(false);
      input.pause();
      output.write('\n');
      resolve(value);
    };
    const onData = (text: string) => {
      for (const char of text) {
        if (char === '\r' || char === '\n' || char === '\u0004') return done(typed);
        if (char === '\u0003') return done(null);
        if (char === '\u007f' || char === '\b') typed = typed.slice(0, -1);
        else if (char >= ' ') typed += char;
      }
    };
    input.on('data', onData);
  });
}

/** `what`, typed hidden, and typed again to confirm when `confirm`; null when aborted or the two differ (said on `output`). */
export async function readTypedSecret(
  input: TerminalInput,
  output: NodeJS.WritableStream,
  what: string,
  confirm: boolean,
): Promise<string | null> {
  const first = await readHidden(input, output, `${what} (not shown; Enter to finish): `);
  if (first === null || !confirm) return first;
  const again = await readHidden(input, output, `${what} again: `);
  if (again !== first) {
    output.write('keyward: the two entries differ; nothing was done\n');
    return null;
  }
  return first;
}
