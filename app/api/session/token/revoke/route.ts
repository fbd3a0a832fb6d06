import { keyward } from '@/keyward';

export const runtime = 'nodejs';
export const dynamic = 'force-dynamic';
export const POST = keyward.mobileRevokeRoute;
