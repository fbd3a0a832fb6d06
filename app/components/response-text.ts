/** For the client components that call Keyward's API: the message of its JSON error, or the status. */
export async function errorText(response: Response): Promise<string> {
  try {
    const body = (await response.json()) as { error?: { message?: string } };
    return body.error?.message ?? `Refused (${response.status}).`;
  } catch {
    return `Refused (${response.status}).`;
  }
}

/** The `code` of Keyward's JSON error, or null when the body is not one. */
export async function errorCode(response: Response): Promise<string | null> {
  try {
    const body = (await response.json()) as { error?: { code?: unknown } };
    return typeof body.error?.code === 'string' ? body.error.code : null;
  } catch {
    return null;
  }
}
