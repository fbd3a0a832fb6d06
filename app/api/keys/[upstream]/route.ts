import { keyward } from '@/keyward';

export const runtime = 'nodejs';
export const dynamic = 'force-dynamic';
export const GET = keyward.userKeyRoute;
export const PUT = keyward.userKeyRoute;
export const DELETE = keyward.userKeyRoute;
