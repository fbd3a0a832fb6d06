import { keyward } from '@/keyward';

export const runtime = 'nodejs';
export const GET = keyward.authGetRoute;
export const POST = keyward.authPostRoute;
