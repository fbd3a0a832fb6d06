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

/**
 * Entries typed after each of `prompts` (written to `output` in turn), or null when aborted with Ctrl-C. One
 * reader for all of them, so text pasted with its line breaks answers the prompts that follow. Escape sequences
 * (arrow and function keys) are skipped, never taken into the secret; Backspace erases one character.
 */
export function readHiddenLines(input: TerminalInput, output: NodeJS.WritableStream, prompts: readonly string[]): Promise<string[] | null> {
  input.setRawMode(true);
  input.setEncoding('utf8');
  input.resume();
  output.write(prompts[0]!);
  return new Promise((resolve) => {
    const lines: string[] = [];
    let typed: string[] = [];
    /** Inside an escape sequence: 'esc' after ESC, 'csi' after ESC [ (until a final byte), 'ss3' after ESC O. */
    let escape: 'esc' | 'csi' | 'ss3' | null = null;
    const finish = (value: string[] | null) => {
      input.off('data', onData);
      input.setRawMode(false);
      input.pause();
      resolve(value);
    };
    const onData = (text: string) => {
      for (const char of text) {
        if (escape === 'esc') {
          escape = char === '[' ? 'csi' : char === 'O' ? 'ss3' : null;
          continue;
        }
        if (escape === 'csi') {
          if (char >= '@' && char <= '~') escape = null;
          continue;
        }
        if (escape === 'ss3') {
          escape = null;
          continue;
        }
        if (char === '\u001b') escape = 'esc';
        else if (char === '\u0003') {
          output.write('\n');
          return finish(null);
        } else if (char === '\r' || char === '\n' || char === '\u0004') {
          output.write('\n');
          lines.push(typed.join(''));
          typed = [];
          if (lines.length === prompts.length) return finish(lines);
          output.write(prompts[lines.length]!);
        } else if (char === '\u007f' || char === '\b') typed.pop();
        else if (char >= ' ') typed.push(char);
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
  const prompts = [`${what} (not shown; Enter to finish): `, ...(confirm ? [`${what} again: `] : [])];
  const lines = await readHiddenLines(input, output, prompts);
  if (lines === null) {
    output.write('keyward: aborted; nothing was done\n');
    return null;
  }
  if (lines.some((line) => line !== lines[0])) {
    output.write('keyward: the two entries differ; nothing was done\n');
    return null;
  }
  return lines[0]!;
}
