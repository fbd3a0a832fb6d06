import { keyward } from '@/keyward';

export const runtime = 'nodejs';
export const dynamic = 'force-dynamic';
export const GET = keyward.proxyRoute;
export const HEAD = keyward.proxyRoute;
export const POST = keyward.proxyRoute;
export const PUT = keyward.proxyRoute;
export const PATCH = keyward.proxyRoute;
export const DELETE = keyward.proxyRoute;
export const OPTIONS = keyward.proxyRoute;
