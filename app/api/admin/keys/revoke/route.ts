import { keyward } from '@/keyward';

export const runtime = 'nodejs';
export const dynamic = 'force-dynamic';
export const { GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS } = keyward.everyMethod(keyward.adminKeyRevokeRoute);
