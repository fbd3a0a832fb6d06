import { keyward } from '@/keyward';

export const runtime = 'nodejs';
export const dynamic = 'force-dynamic';
export const GET = keyward.mobileAuthorizeRoute;
export const POST = keyward.mobileAuthorizeRoute;
