import { keyward } from '@/keyward';

export const runtime = 'nodejs';
export const { GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS } = keyward.everyMethod({ GET: keyward.authGetRoute, POST: keyward.authPostRoute });
