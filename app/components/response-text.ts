/** For the client components that call Keyward's API: the message of its JSON error, or the status. */
export async function errorText(response: Response): Promise<string> {
  try {
    const body = (await response.json()) as { error?: { message?: string } };
    return body.error?.message ?? `Refused (${response.status}).`;
  } catch {
    return `Refused (${response.status}).`;
  }
}

/** A time in the browser's own locale and zone. */
export function formatDate(iso: string): string {
  return new Date(iso).toLocaleString();
}
